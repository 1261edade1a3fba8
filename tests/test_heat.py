"""Heat scores from small hand-made units: fast, no models, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memos_cli.errors import UsageError
from memos_cli.plaintext.heat import HeatWeights, heat, hottest, last_used, signals
from memos_cli.plaintext.units import MemoryUnit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def unit(uid: str = "01m7y7n8qk18kx", *, accesses: int = 0, age_days: float | None = 10.0,
         last_accessed_days: float | None = None, importance: float = 0.5) -> MemoryUnit:
    created = None if age_days is None else NOW - timedelta(days=age_days)
    last = None if last_accessed_days is None else NOW - timedelta(days=last_accessed_days)
    return MemoryUnit(id=uid, text="x", created_at=created, time=created, access_count=accesses,
                      last_accessed=last, importance=importance)


def test_heat_is_between_0_and_1():
    assert heat(unit(accesses=0, age_days=None, importance=0.0), NOW) == 0.0
    top = heat(unit(accesses=10**9, age_days=0, importance=1.0), NOW)
    assert 0.99 < top <= 1.0
    assert 0.0 < heat(unit(), NOW) < 1.0


def test_each_signal_raises_heat():
    base = heat(unit(), NOW)
    assert heat(unit(accesses=3), NOW) > base
    assert heat(unit(age_days=1), NOW) > base
    assert heat(unit(importance=0.9), NOW) > base
    assert heat(unit(last_accessed_days=1), NOW) > base  # recalled lately: recent although created long ago


def test_more_accesses_saturate():
    parts = [signals(unit(accesses=n), NOW)["access"] for n in (0, 1, 5, 50, 5000)]
    assert parts == sorted(parts) and parts[0] == 0.0 and parts[-1] < 1.0
    assert parts[2] == pytest.approx(0.5)  # access_half accesses give one half


def test_half_life_halves_the_recency_part():
    weights = HeatWeights(half_life_days=7)
    fresh = signals(unit(age_days=0), NOW, weights)["recency"]
    week = signals(unit(age_days=7), NOW, weights)["recency"]
    fortnight = signals(unit(age_days=14), NOW, weights)["recency"]
    assert fresh == pytest.approx(1.0)
    assert week == pytest.approx(0.5) and fortnight == pytest.approx(0.25)
    # And in the score: with only recency weighed, heat is the recency part.
    only_recency = HeatWeights(access=0, recency=1, importance=0, half_life_days=7)
    assert heat(unit(age_days=7), NOW, only_recency) == pytest.approx(0.5)


def test_recency_uses_last_accessed_then_created_at_then_time():
    u = unit(age_days=30, last_accessed_days=2)
    assert last_used(u) == u.last_accessed
    u = unit(age_days=30)
    assert last_used(u) == u.created_at
    u = MemoryUnit(id="01m7y7n8qk18kx", text="x", time=NOW - timedelta(days=3))
    assert last_used(u) == u.time
    assert signals(MemoryUnit(id="01m7y7n8qk18kx", text="x"), NOW)["recency"] == 0.0
    assert signals(unit(age_days=-5), NOW)["recency"] == 1.0  # the future counts as now


def test_weights_are_a_weighted_mean():
    u = unit(accesses=5, age_days=7, importance=0.2)  # access 0.5, recency 0.5, importance 0.2
    w = HeatWeights(access=1, recency=1, importance=2, half_life_days=7, access_half=5)
    assert heat(u, NOW, w) == pytest.approx((0.5 + 0.5 + 2 * 0.2) / 4)


def test_hottest_orders_by_heat_then_id():
    cold = unit("01m7y7n8qk18k0", age_days=60)
    warm = unit("01m7y7n8qk18k1", age_days=3)
    hot = unit("01m7y7n8qk18k2", age_days=1, accesses=20)
    assert hottest([cold, warm, hot], 2, NOW) == [hot, warm]
    assert hottest([cold, warm, hot], 10, NOW) == [hot, warm, cold]
    assert hottest([cold, warm, hot], 0, NOW) == []
    assert hottest([], 3, NOW) == []


def test_hottest_breaks_ties_by_id():
    twins = [unit(uid) for uid in ("01m7y7n8qk18kz", "01m7y7n8qk18ka", "01m7y7n8qk18km")]
    assert [u.id for u in hottest(twins, 3, NOW)] == ["01m7y7n8qk18ka", "01m7y7n8qk18km", "01m7y7n8qk18kz"]
    assert [u.id for u in hottest(reversed(twins), 3, NOW)] == ["01m7y7n8qk18ka", "01m7y7n8qk18km", "01m7y7n8qk18kz"]


def test_hottest_defaults_to_now():
    fresh, stale = unit("01m7y7n8qk18k0", age_days=None), unit("01m7y7n8qk18k1", age_days=None)
    fresh.created_at = datetime.now(UTC)
    stale.created_at = datetime.now(UTC) - timedelta(days=365)
    assert hottest([stale, fresh], 1) == [fresh]


@pytest.mark.parametrize("kwargs", [{"access": -1}, {"recency": float("nan")}, {"importance": True},
                                    {"access": 0, "recency": 0, "importance": 0}, {"half_life_days": 0},
                                    {"access_half": -2}])
def test_bad_weights_are_refused(kwargs):
    with pytest.raises(UsageError, match="bad heat"):
        HeatWeights(**kwargs)


def test_bad_n_is_refused():
    with pytest.raises(UsageError, match="bad n"):
        hottest([unit()], -1, NOW)
