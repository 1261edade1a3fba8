"""The plaintext memory unit: its fields, ids, and validation of user input.

A unit is one remembered thing (a fact, a preference, an episode, a note)
with the MemOS metadata header: provenance (``sources``), versioning
(``version``, ``supersedes``), lifecycle (``status``, ``expires_at``,
``valid_from``/``valid_to``), priority (``importance``), placement
(``pinned``: always in context, in its cube's activation memory) and usage
(``access_count``, ``last_accessed``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from memos_cli.errors import UsageError

MAX_TEXT_BYTES = 1024 * 1024
KINDS_SUGGESTED = ("fact", "preference", "episode", "note")
STATUSES = ("active", "archived", "deleted")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # always fullmatch: "$" would let "name\n" in
MAX_TAG_CHARS = 100
# Control characters (C0 and DEL, C1) and line or paragraph separators: never in a tag.
_TAG_BAD_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029,]")

# Ids: 10 characters of milliseconds since the epoch and 4 random ones, in
# Crockford's base32 (lower case). They sort by creation time, and ids made in
# one process are strictly increasing (the random part counts up within a
# millisecond), so a batch keeps its order.
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
_id_lock = threading.Lock()
_last_id = [0, 0]  # [milliseconds, random part]


def _b32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_B32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id() -> str:
    """A short, unique id that sorts by creation time."""
    with _id_lock:
        ms = int(_time.time() * 1000)
        if ms <= _last_id[0]:
            ms, rand = _last_id[0], _last_id[1] + 1
            if rand >= 32**4:
                ms, rand = ms + 1, int.from_bytes(os.urandom(2), "big")
        else:
            rand = int.from_bytes(os.urandom(2), "big")
        _last_id[0], _last_id[1] = ms, rand
    return _b32(ms, 10) + _b32(rand, 4)


def _shown(value: object, width: int = 40) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | datetime | None, what: str = "time") -> datetime | None:
    """An ISO 8601 date or time, 'now', 'today', 'yesterday', or '3d ago'.

    A time without a zone is taken as local time, and a bare date as the
    start of that day in local time (shown back in the same zone, it is the
    same date). The result is in UTC. A time that cannot be held (past year
    9999 in UTC, say) is a ``UsageError``.
    """
    try:
        return _parse_time(value, what)
    except (OverflowError, ValueError):  # OverflowError: out of datetime's range once in UTC (or once subtracted)
        raise UsageError(f"bad {what} {_shown(value)}: out of range (use a time between the years 1 and 9999)") from None


def _parse_time(value: str | datetime | None, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip()
        low = text.lower()
        if low == "now":
            return utcnow()
        if low in ("today", "yesterday"):
            day = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)  # local, made aware below
            dt = day - timedelta(days=1) if low == "yesterday" else day
        elif low.endswith(" ago"):
            return utcnow() - parse_duration(low[:-4].strip(), what)
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
            except ValueError:
                raise UsageError(
                    f"bad {what} {_shown(value)}: use ISO 8601 (2024-05-08 or 2024-05-08T13:56), "
                    "'now', 'today', 'yesterday' or '3d ago'"
                ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time
    return dt.astimezone(UTC)


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w|y)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(value: str, what: str = "ttl") -> timedelta:
    """'90s', '15m', '12h', '30d', '2w', '1y'."""
    match = _DURATION_RE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"bad {what} {_shown(value)}: use a positive number and a unit, like 90s, 15m, 12h, 30d, 2w "
                         "or 1y")
    try:
        return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:  # over timedelta's 999999999 days (or an infinite float)
        raise UsageError(f"bad {what} {_shown(value)}: too long") from None


def check_text(text: object) -> str:
    if not isinstance(text, str):
        raise UsageError("text must be a string")
    if not text.strip():
        raise UsageError("text is empty")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise UsageError(f"text is over {MAX_TEXT_BYTES // 1024} KiB; split it into several memories")
    if "\x00" in text:
        raise UsageError("text contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("text is not valid UTF-8") from None
    return text


def check_name(value: object, what: str) -> str:
    """Cube, user and kind names: a word of letters, digits and _ . @ -."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise UsageError(f"bad {what} {_shown(value)}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    return value


def check_tags(tags: object, *, strict: bool = True) -> list[str]:
    """Tags, stripped and without repeats: each at most 100 characters, with no comma (the
    separator where tags are listed), line break or control character.

    ``strict=False`` (units read from their files) checks only that they are non-empty
    strings, as memos did before, so that a store written then still opens.
    """
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise UsageError("tags must be a list of non-empty strings")
    out: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if strict and len(tag) > MAX_TAG_CHARS:
            raise UsageError(f"bad tag {tag[:20]!r}…: at most {MAX_TAG_CHARS} characters")
        if strict and _TAG_BAD_RE.search(tag):
            raise UsageError(f"bad tag {tag!r}: no commas, line breaks or control characters")
        if tag not in out:
            out.append(tag)
    return out


def check_meta(meta: object) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise UsageError("meta must be a JSON object")
    try:
        json.dumps(meta, allow_nan=False)  # NaN and Infinity are not JSON: strict parsers reject them
    except (TypeError, ValueError):
        raise UsageError("meta must be plain JSON (no NaN or Infinity)") from None
    return meta


class NotJSONError(ValueError):
    """JSON that only a lenient parser reads: NaN, Infinity or -Infinity."""


def _no_constant(name: str) -> Any:
    raise NotJSONError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity (``NotJSONError``, a ``ValueError``)."""
    return json.loads(text, parse_constant=_no_constant)


def iter_json_lines(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each non-blank line of ``text``, parsed when it is reached.

    Strict JSON: NaN and Infinity are refused. A caller that checks each
    record as it comes reports the first bad line, bad JSON or not.
    """
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028, U+0085 and the like,
    # which JSON allows unescaped inside a string.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = loads_strict(line)
        except ValueError as exc:
            raise UsageError(f"line {lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        yield lineno, record


def parse_meta_pairs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON is kept as JSON."""
    meta: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --meta {pair!r}: use key=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:  # not JSON: the text as it is
            value = raw
        else:
            try:
                value = loads_strict(raw)
            except NotJSONError as exc:  # JSON but for a NaN or Infinity in it: say so, rather than guess
                raise UsageError(f"bad --meta {pair!r}: {exc} (to keep it as text, quote it: "
                                 f"{key.strip()}={json.dumps(raw)})") from None
        meta[key.strip()] = value
    return meta


def check_importance(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"bad importance {value!r}: use a number from 0 to 1")
    return float(value)


def check_pinned(value: object) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"bad pinned {value!r}: use true or false")
    return value


@dataclass
class MemoryUnit:
    """One plaintext memory unit, as stored in the ``units`` table."""

    id: str
    text: str
    kind: str = "note"
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    cube: str = "default"
    user: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    time: datetime | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    importance: float = 0.5
    access_count: int = 0
    last_accessed: datetime | None = None
    expires_at: datetime | None = None
    status: str = "active"
    pinned: bool = False  # placement, not content: pinning changes neither version nor updated_at
    version: int = 1
    supersedes: str | None = None
    model: str = ""
    vector: list[float] | None = field(default=None, repr=False)

    def to_json(self, with_vector: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; times as ISO 8601 in UTC."""
        # Shallow, unlike dataclasses.asdict (a deep copy, and the slow part of writing 5k unit files).
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if not with_vector:
            out.pop("vector")
        elif self.vector is not None:
            out["vector"] = [float(x) for x in self.vector]
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = iso(value)
        return out

    @classmethod
    def from_json(cls, data: object) -> MemoryUnit:
        """A unit from its JSON form (a unit file, or a unit edited by hand), validated.

        Raises ``UsageError`` naming the first bad field.
        """
        if not isinstance(data, dict):
            raise UsageError("a unit must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r}")
        for name in ("id", "text"):
            if name not in data:
                raise UsageError(f"missing field {name!r}")
        uid = data["id"]
        if not isinstance(uid, str) or not _ID_RE.fullmatch(uid):
            raise UsageError(f"bad id {uid!r}")
        sources = data.get("sources") or []
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise UsageError("sources must be a list of JSON objects")
        status = data.get("status", "active")
        if status not in STATUSES:
            raise UsageError(f"bad status {status!r}: use one of {', '.join(STATUSES)}")
        version, count = data.get("version", 1), data.get("access_count", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UsageError(f"bad version {version!r}: use a whole number from 1")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UsageError(f"bad access_count {count!r}: use a whole number from 0")
        supersedes = data.get("supersedes")
        if supersedes is not None and (not isinstance(supersedes, str) or not _ID_RE.fullmatch(supersedes)):
            raise UsageError(f"bad supersedes {supersedes!r}: use a unit id")
        times = {name: _strict_time(data.get(name), name) for name in _TIME_FIELDS}
        importance = data.get("importance", 0.5)
        return cls(
            id=uid,
            text=check_text(data["text"]),
            kind=check_name(data.get("kind", "note"), "kind"),
            tags=check_tags(data.get("tags"), strict=False),
            meta=check_meta(data.get("meta")),
            sources=sources,
            cube=check_name(data.get("cube", "default"), "cube"),
            user=check_name(data.get("user") or "user", "user"),
            importance=check_importance(importance),
            access_count=count,
            status=status,
            pinned=check_pinned(data.get("pinned", False)),
            version=version,
            supersedes=supersedes,
            model=str(data.get("model") or ""),
            **times,
        )


_ID_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{14}")  # always fullmatch
_TIME_FIELDS = ("created_at", "updated_at", "time", "valid_from", "valid_to", "last_accessed", "expires_at")
TIME_FIELDS = _TIME_FIELDS  # a unit's fields that hold times


def _strict_time(value: object, name: str) -> datetime | None:
    """An ISO 8601 time with its zone, as unit files hold them."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"bad {name} {value!r}: use an ISO 8601 time")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise UsageError(f"bad {name} {value!r}: use an ISO 8601 time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def is_unit_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def default_user() -> str:
    """``$MEMOS_USER``, else the login name."""
    name = os.environ.get("MEMOS_USER") or os.environ.get("USER") or os.environ.get("LOGNAME") or "user"
    return name if _NAME_RE.fullmatch(name) else "user"


def build_unit(
    text: object,
    *,
    kind: object = "note",
    tags: object = None,
    meta: object = None,
    sources: object = None,
    cube: object = "default",
    user: object = None,
    time: object = None,
    ttl: object = None,
    importance: object = 0.5,
    pinned: object = False,
    now: datetime | None = None,
) -> MemoryUnit:
    """Validate raw input (from flags or a JSON line) into a new unit.

    Raises ``UsageError`` naming the first bad field.
    """
    now = now or utcnow()
    when = parse_time(time, "time") if isinstance(time, (str, datetime)) or time is None else None
    if time is not None and not isinstance(time, (str, datetime)):
        raise UsageError(f"bad time {time!r}: use an ISO 8601 string")
    expires = None
    if ttl is not None:
        if not isinstance(ttl, str):
            raise UsageError(f"bad ttl {ttl!r}: use a string like 30d")
        try:
            expires = now + parse_duration(ttl)
        except OverflowError:  # past the year 9999
            raise UsageError(f"bad ttl {_shown(ttl)}: too long (it would end after the year 9999)") from None
    if sources is not None and (
        not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources)
    ):
        raise UsageError("sources must be a list of JSON objects")
    return MemoryUnit(
        id=new_id(),
        text=check_text(text),
        kind=check_name(kind if kind is not None else "note", "kind"),
        tags=check_tags(tags),
        meta=check_meta(meta),
        sources=list(sources or []),
        cube=check_name(cube if cube is not None else "default", "cube"),
        user=check_name(user, "user") if user is not None else default_user(),
        created_at=now,
        updated_at=now,
        time=when or now,
        valid_from=when or now,
        importance=check_importance(importance if importance is not None else 0.5),
        expires_at=expires,
        pinned=check_pinned(pinned if pinned is not None else False),
    )
