"""Heat: how much a memory is in use, from its access count, recency and importance.

The score of a unit is a weighted mean of three signals, each in [0, 1]::

    heat = (w_access * A + w_recency * R + w_importance * I) / (w_access + w_recency + w_importance)

- ``A = n / (n + access_half)`` where ``n`` is ``access_count``: 0 for a unit
  never recalled, 1/2 after ``access_half`` recalls, approaching 1. It
  saturates, so a few hundred recalls of one unit do not drown the others.
- ``R = 0.5 ** (age / half_life_days)`` where ``age`` is the days since the
  unit was last used: its ``last_accessed``, else when it was remembered
  (``created_at``), else its ``time``. A moment in the future counts as now
  (R = 1); a unit with none of these times has R = 0. Every half-life
  halves R.
- ``I = importance`` (0 to 1, 0.5 unless set).

So heat is in [0, 1] too, and raising any one signal (with a non-zero weight)
raises it. The defaults weigh use (access and recency) over the declared
importance, with a week's half-life: a unit recalled often this week is hot,
one untouched for a month has lost most of its recency.

Everything here is pure (no store I/O): callers pass units as the store
returns them (``MemoryStore.get`` and ``list`` include pending access counts)
and the time ``now``. The weights are settings of ``memos.toml`` (``[consolidate.heat]``:
``policy.HeatPolicy.weights`` builds them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MemoryUnit, utcnow

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class HeatWeights:
    """How heat mixes its signals (see the module's docstring)."""

    access: float = 0.4  # weight of the access count
    recency: float = 0.4  # weight of the recency of use
    importance: float = 0.2  # weight of the declared importance
    half_life_days: float = 7.0  # recency halves every this many days
    access_half: float = 5.0  # accesses at which the access signal is 1/2

    def __post_init__(self) -> None:
        for name in ("access", "recency", "importance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"bad heat weight {name} {value!r}: use a number from 0")
        if self.access + self.recency + self.importance <= 0:
            raise UsageError("bad heat weights: at least one of access, recency and importance must be above 0")
        for name in ("half_life_days", "access_half"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UsageError(f"bad heat {name} {value!r}: use a number above 0")


def last_used(unit: MemoryUnit) -> datetime | None:
    """When the unit was last used: last recalled, else remembered, else its ``time``."""
    return unit.last_accessed or unit.created_at or unit.time


def signals(unit: MemoryUnit, now: datetime, weights: HeatWeights = HeatWeights()) -> dict[str, float]:
    """The three signals of a unit's heat, each in [0, 1]: ``access``, ``recency``, ``importance``."""
    count = max(0, unit.access_count)
    access = count / (count + weights.access_half)
    when = last_used(unit)
    if when is None:
        recency = 0.0
    else:
        age_days = max(0.0, (_aware(now) - _aware(when)).total_seconds() / SECONDS_PER_DAY)
        recency = 0.5 ** (age_days / weights.half_life_days)
    importance = min(1.0, max(0.0, float(unit.importance)))
    return {"access": access, "recency": recency, "importance": importance}


def heat(unit: MemoryUnit, now: datetime, weights: HeatWeights = HeatWeights()) -> float:
    """The unit's heat at ``now``, in [0, 1]."""
    parts = signals(unit, now, weights)
    total = weights.access + weights.recency + weights.importance
    return (weights.access * parts["access"] + weights.recency * parts["recency"]
            + weights.importance * parts["importance"]) / total


def hottest(units: Iterable[MemoryUnit], n: int, now: datetime | None = None,
            weights: HeatWeights = HeatWeights()) -> list[MemoryUnit]:
    """The ``n`` hottest units, hottest first; equal heat goes by id (oldest first)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"bad n {n!r}: use a whole number from 0")
    when = now or utcnow()
    scored = [(heat(u, when, weights), u) for u in units]
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [u for _, u in scored[:n]]


def _aware(dt: datetime) -> datetime:
    """A time without a zone is taken as UTC (unit times always have one)."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
