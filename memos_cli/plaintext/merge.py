"""Merging two versions of one memory unit field by field: memory-level, not text-level.

``merge3`` is a sync's merge, with the version both sides started from
(``base``): what one side changed is taken; tag sets and sources are united
(what one side removed stays removed unless the other added it); meta is
merged key by key; access counts are summed (each side's new reads are
added); of a field both changed differently, the later change wins (the
side whose ``updated_at`` is later; this machine's on a tie) and the unit is
reported as a ``Conflict``. A text changed on both sides is always a
conflict; the version not kept stays in history, as the merge commit's
other parent.

One choice needs saying: a unit forgotten on one side and edited on the
other stays forgotten, with the edit merged into it. A forget is the user
saying "stop using this", often for a reason the other machine did not know
(it was wrong, or private); an edit made without that knowledge should not
bring it back. Nothing is lost: the unit, edit included, is still in the
store (``memos list --status deleted``) and in history, and the conflict
names it.

``merge2`` is an import's merge by id (a pack, a memos export), where no
common version is known: the newer side's fields win, tags and sources are
united, meta keys merged (the newer side's value on a clash), and access
counts take the larger (importing the same file twice must not add them up).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from memos_cli.plaintext.units import MemoryUnit, iso, utcnow

# Fields merged as one value each (the later change wins when both changed them).
SCALARS = ("text", "kind", "cube", "user", "importance", "time", "valid_from", "valid_to", "expires_at", "status",
           "pinned", "supersedes")
# Fields that make a new version when they change (pinning and access counts are placement and usage).
CONTENT = ("text", "kind", "tags", "meta", "sources", "importance", "time", "valid_from", "valid_to", "expires_at",
           "status", "supersedes", "cube", "user")


@dataclass
class Conflict:
    """A unit both sides changed in the same field, differently."""

    id: str
    fields: list[str]
    kept: str  # "here" or "remote": whose values of those fields were kept
    reason: str
    other_text: str | None = None  # the text not kept, when the texts differed
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "fields": self.fields, "kept": self.kept, "reason": self.reason,
                "other_text": self.other_text, **self.details}
_EPOCH = datetime.min.replace(tzinfo=UTC)


def _key(value: Any) -> str:
    if value is _MISSING:
        return "\0missing"
    return json.dumps(value, sort_keys=True, default=str)


def _unite(base: list[Any], ours: list[Any], theirs: list[Any]) -> list[Any]:
    """Three-way union of lists used as sets, in ours-then-theirs order: what a side added is in,
    what a side removed is out unless the other side added it back."""
    b, o, t = ({_key(v) for v in side} for side in (base, ours, theirs))
    out, seen = [], set()
    for value in [*ours, *theirs]:
        k = _key(value)
        if k in seen:
            continue
        if (k in o and k in t) or (k in o and k not in b) or (k in t and k not in b):
            out.append(value)
            seen.add(k)
    return out


def _later(ours: MemoryUnit, theirs: MemoryUnit) -> bool:
    """Is theirs the later change? (this machine's wins a tie)"""
    mine, other = ours.updated_at or _EPOCH, theirs.updated_at or _EPOCH
    return (other, theirs.version) > (mine, ours.version)


def _same_content(a: MemoryUnit, b: MemoryUnit) -> bool:
    return all(_key(getattr(a, f)) == _key(getattr(b, f)) for f in CONTENT)


def merge3(base: MemoryUnit | None, ours: MemoryUnit, theirs: MemoryUnit) -> tuple[MemoryUnit, Conflict | None]:
    """Merge this machine's version (``ours``) and the remote's (``theirs``) of one unit, both
    changed since ``base`` (None: added on both sides). Returns the merged unit and the conflict,
    if any."""
    if base is None:  # no common version: every field that differs counts as changed on both sides
        base = replace(theirs, **{name: _MISSING for name in SCALARS}, tags=[], meta={}, sources=[], access_count=0)
    theirs_later = _later(ours, theirs)
    merged = replace(ours, vector=None, model="")
    clashes: list[str] = []
    for name in SCALARS:
        b, o, t = getattr(base, name), getattr(ours, name), getattr(theirs, name)
        if _key(o) == _key(t) or _key(t) == _key(b):
            value = o
        elif _key(o) == _key(b):
            value = t
        else:
            clashes.append(name)
            value = t if theirs_later else o
        setattr(merged, name, value)
    merged.tags = _unite(base.tags, ours.tags, theirs.tags)
    merged.sources = _unite(base.sources, ours.sources, theirs.sources)
    meta: dict[str, Any] = {}
    for key in [*ours.meta, *(k for k in theirs.meta if k not in ours.meta)]:
        b, o, t = base.meta.get(key, _MISSING), ours.meta.get(key, _MISSING), theirs.meta.get(key, _MISSING)
        if _key(o) == _key(t) or _key(t) == _key(b):
            value = o
        elif _key(o) == _key(b):
            value = t
        else:
            clashes.append(f"meta.{key}")
            value = t if theirs_later else o
        if value is not _MISSING:
            meta[key] = value
    merged.meta = meta
    merged.access_count = max(0, ours.access_count + theirs.access_count - base.access_count)
    merged.last_accessed = max((u.last_accessed for u in (ours, theirs) if u.last_accessed), default=None)
    merged.created_at = min((u.created_at for u in (ours, theirs) if u.created_at), default=None)
    conflict = None
    # A forget wins over an edit, and over any other change of status (see the module's docstring).
    forgot = [side for side, u in (("here", ours), ("remote", theirs)) if u.status == "deleted" != base.status]
    if forgot:
        merged.status = "deleted"
        clashes = [c for c in clashes if c != "status"]
        other = theirs if forgot == ["here"] else ours
        if len(forgot) == 1 and not _same_content(replace(other, status=base.status), base):
            conflict = Conflict(ours.id, ["status"], forgot[0],
                                f"forgotten {_side(forgot[0])}, edited {_side('remote' if forgot == ['here'] else 'here')}: "
                                "kept forgotten, with the edit merged in")
    if clashes:
        kept = "remote" if theirs_later else "here"
        other = ours if theirs_later else theirs
        reason = ("both changed the text: kept the later change" if "text" in clashes
                  else f"both changed {', '.join(clashes)}: kept the later change")
        if conflict is not None:
            reason = conflict.reason + "; " + reason
        conflict = Conflict(ours.id, sorted(set(clashes) | set(conflict.fields if conflict else [])), kept, reason,
                            other_text=other.text if "text" in clashes else None)
    if _same_content(merged, ours) and merged.pinned == ours.pinned:
        merged.version, merged.updated_at = ours.version, ours.updated_at
    elif _same_content(merged, theirs) and merged.pinned == theirs.pinned:
        merged.version, merged.updated_at = theirs.version, theirs.updated_at
    else:
        merged.version = max(ours.version, theirs.version) + 1
        merged.updated_at = max(t for t in (ours.updated_at, theirs.updated_at, utcnow()) if t)
    if conflict is not None:
        conflict.details = {"kept_version": merged.version, "here_version": ours.version,
                            "remote_version": theirs.version, "updated_here": iso(ours.updated_at),
                            "updated_remote": iso(theirs.updated_at)}
    return merged, conflict


def _side(side: str) -> str:
    return "on this machine" if side == "here" else "on the remote"


def merge2(current: MemoryUnit, incoming: MemoryUnit) -> MemoryUnit:
    """An import's merge of a unit the store has (``current``) with the file's (``incoming``)."""
    newer, older = (incoming, current) if _later(current, incoming) else (current, incoming)
    merged = replace(newer, vector=None, model="")
    merged.tags = list(dict.fromkeys([*newer.tags, *older.tags]))
    seen = {_key(s) for s in newer.sources}
    merged.sources = [*newer.sources, *(s for s in older.sources if _key(s) not in seen)]
    merged.meta = {**older.meta, **newer.meta}
    merged.access_count = max(current.access_count, incoming.access_count)
    merged.last_accessed = max((u.last_accessed for u in (current, incoming) if u.last_accessed), default=None)
    merged.created_at = min((u.created_at for u in (current, incoming) if u.created_at), default=None)
    return merged


def same_unit(a: MemoryUnit, b: MemoryUnit) -> bool:
    """Every field equal but the derived ones (vector, embedding model)."""
    return _key({**a.to_json(), "model": ""}) == _key({**b.to_json(), "model": ""})


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
