"""Validation of unit fields and ids: fast, no models."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import (
    MAX_TEXT_BYTES,
    MemoryUnit,
    build_unit,
    check_text,
    new_id,
    parse_duration,
    parse_meta_pairs,
    parse_time,
)


def test_ids_are_short_unique_and_sorted_in_creation_order():
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 14 and i.isalnum() and i == i.lower() for i in ids)


@pytest.mark.parametrize("text", ["2024-05-08", "2024-05-08T13:56", "2024-05-08T13:56:00Z", "2024-05-08T13:56:00+02:00"])
def test_parse_time_accepts_iso(text):
    dt = parse_time(text)
    assert dt is not None and dt.tzinfo == UTC and dt.year == 2024


def test_parse_time_with_zone_converts_to_utc():
    assert parse_time("2024-05-08T13:56:00+02:00").hour == 11


def test_parse_time_relative():
    now = parse_time("now")
    assert abs((now - parse_time("3d ago")) - timedelta(days=3)) < timedelta(seconds=5)
    assert parse_time("yesterday") < parse_time("today")


@pytest.mark.parametrize("bad", ["tomorrowish", "2024-13-01", "05/08/2024", "3 parsecs ago"])
def test_parse_time_rejects_garbage(bad):
    with pytest.raises(UsageError, match="bad time"):
        parse_time(bad)


@pytest.mark.parametrize("value,seconds", [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600)])
def test_parse_duration(value, seconds):
    assert parse_duration(value).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "30", "d30", "-5d", "0d", "5 fortnights"])
def test_parse_duration_rejects_garbage(bad):
    with pytest.raises(UsageError, match="bad ttl"):
        parse_duration(bad)


def test_text_checks():
    with pytest.raises(UsageError, match="empty"):
        check_text("   \n")
    with pytest.raises(UsageError, match="over"):
        check_text("x" * (MAX_TEXT_BYTES + 1))
    with pytest.raises(UsageError, match="NUL"):
        check_text("a\x00b")
    assert check_text("é" * 1000) == "é" * 1000


def test_meta_pairs_keep_json_values():
    assert parse_meta_pairs(["a=1", "b=x", "c=[1,2]", "d=a=b"]) == {"a": 1, "b": "x", "c": [1, 2], "d": "a=b"}
    with pytest.raises(UsageError, match="key=value"):
        parse_meta_pairs(["novalue"])


def test_build_unit_defaults_and_ttl():
    unit = build_unit("Alice likes tea", ttl="30d", tags=["a", "a", "b"], user="alice")
    assert unit.kind == "note" and unit.cube == "default" and unit.status == "active"
    assert unit.tags == ["a", "b"] and unit.version == 1 and unit.user == "alice"
    assert unit.time == unit.created_at and unit.expires_at - unit.created_at == timedelta(days=30)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"kind": "two words"}, "bad kind"), ({"cube": ""}, "bad cube"), ({"importance": 2}, "importance"),
     ({"tags": [""]}, "tags"), ({"meta": [1]}, "meta"), ({"time": 5}, "bad time"), ({"ttl": 5}, "bad ttl"),
     ({"pinned": 1}, "bad pinned"), ({"pinned": "yes"}, "bad pinned")],
)
def test_build_unit_rejects_bad_fields(kwargs, message):
    with pytest.raises(UsageError, match=message):
        build_unit("text", **kwargs)


def test_pinned_defaults_to_false_and_round_trips():
    unit = build_unit("Answer briefly")
    assert unit.pinned is False
    pinned = build_unit("Answer briefly", pinned=True)
    assert pinned.pinned is True
    data = pinned.to_json()
    assert data["pinned"] is True and MemoryUnit.from_json(data).pinned is True
    data.pop("pinned")  # a schema-2 file has no such field
    assert MemoryUnit.from_json(data).pinned is False


@pytest.mark.parametrize("bad", [1, 0, "true", None, [True]])
def test_from_json_rejects_a_pinned_that_is_not_a_bool(bad):
    data = build_unit("x").to_json()
    data["pinned"] = bad
    with pytest.raises(UsageError, match="bad pinned"):
        MemoryUnit.from_json(data)
