"""Reading the store's history: the log of operations, memory-level diffs, one unit's versions.

All of it comes from git: each commit's ``Memos-*`` trailers say what
operation made it, and the unit files it changed say which units and how.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import MemoryUnit, is_unit_id
from memos_cli.store import params
from memos_cli.store.params import ParamChange
from memos_cli.store.repo import EMPTY_TREE, Commit

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

# Fields that recall changes by counting use; a version that differs only in
# them is a usage update, not an edit.
USAGE_FIELDS = ("access_count", "last_accessed")


def log(store: MemoryStore, n: int | None = None, cube: str | None = None, user: str | None = None) -> list[Commit]:
    """The operations, newest first; ``cube`` and ``user`` keep those that touched them."""
    if n is not None and n < 1:
        raise UsageError(f"bad -n {n}: use a whole number from 1")
    if cube is None and user is None:
        return store.repo.log(n)
    out = []
    for commit in store.repo.log():
        cubes = set((commit.trailers.get("Memos-Cube") or "").split(","))
        users = set((commit.trailers.get("Memos-User") or commit.author).split(","))
        if cube is not None and cube not in cubes and "*" not in cubes:
            continue
        if user is not None and user not in users:
            continue
        out.append(commit)
        if n is not None and len(out) >= n:
            break
    return out


@dataclass
class UnitChange:
    """How one unit differs between two states of the store."""

    id: str
    change: str  # "added", "removed" or "changed"
    old: MemoryUnit | None
    new: MemoryUnit | None
    fields: list[str] = field(default_factory=list)  # the changed fields, for "changed"

    @property
    def usage_only(self) -> bool:
        return self.change == "changed" and all(f in USAGE_FIELDS for f in self.fields)

    def text_diff(self) -> list[str]:
        """A unified diff of the text, line by line."""
        old = self.old.text.splitlines() if self.old else []
        new = self.new.text.splitlines() if self.new else []
        return list(difflib.unified_diff(old, new, "before", "after", lineterm="", n=2))[2:]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "change": self.change}
        if self.change == "changed":
            old, new = self.old.to_json(), self.new.to_json()  # type: ignore[union-attr]
            out["fields"] = {f: {"old": old[f], "new": new[f]} for f in self.fields}
            if "text" in self.fields:
                out["text_diff"] = self.text_diff()
        else:
            unit = self.new or self.old
            assert unit is not None
            out["unit"] = unit.to_json()
        return out


@dataclass
class Diff:
    old: str  # commit ids (the empty tree before the first commit)
    new: str
    changes: list[UnitChange]
    params: list[ParamChange] = field(default_factory=list)  # parametric memories' records

    def count(self, change: str) -> int:
        return sum(1 for c in self.changes if c.change == change and not c.usage_only)

    def to_json(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "added": self.count("added"),
            "removed": self.count("removed"),
            "changed": self.count("changed"),
            "usage_updated": sum(1 for c in self.changes if c.usage_only),
            "units": [c.to_json() for c in self.changes],
            "params": [c.to_json() for c in self.params],
        }


def diff(store: MemoryStore, old: str | None = None, new: str | None = None) -> Diff:
    """Units (and parametric memories' records) added, removed and changed from ``old`` to ``new``.

    No revision: what the last commit did. One: from it to HEAD.
    """
    repo = store.repo
    if repo.head() is None:
        raise NotFoundError("the store has no history yet")
    if old is None:
        new_sha = repo.resolve("HEAD")
        old_sha = repo.parent(new_sha)
    else:
        old_sha = repo.resolve(old)
        new_sha = repo.resolve(new or "HEAD")
    paths = [p for _, p in repo.changed(old_sha, new_sha, files.UNITS_DIR) if files.id_of(p)]
    before = _read(store, old_sha, paths) if old_sha != EMPTY_TREE else {}
    after = _read(store, new_sha, paths)
    changes = []
    for path in paths:
        uid = files.id_of(path)
        assert uid is not None
        a, b = before.get(path), after.get(path)
        if a is None and b is not None:
            changes.append(UnitChange(uid, "added", None, b))
        elif a is not None and b is None:
            changes.append(UnitChange(uid, "removed", a, None))
        elif a is not None and b is not None:
            fields = changed_fields(a, b)
            if fields:
                changes.append(UnitChange(uid, "changed", a, b, fields))
    return Diff(old_sha, new_sha, changes, params.changes(store, old_sha, new_sha))


_COMPARED = [f.name for f in dataclasses.fields(MemoryUnit) if f.name not in ("vector", "model")]


def changed_fields(a: MemoryUnit, b: MemoryUnit) -> list[str]:
    """The fields (but the derived vector and model) in which two versions of a unit differ."""
    return [name for name in _COMPARED if getattr(a, name) != getattr(b, name)]


def _read(store: MemoryStore, rev: str, paths: list[str]) -> dict[str, MemoryUnit]:
    """The units in these files at ``rev``, by path (a file absent there is left out)."""
    return {files.unit_path(u.id): u for u in store.repo.units_at(rev, paths)}


@dataclass
class Version:
    """One unit as one commit left it (``unit`` is None where the commit removed it)."""

    commit: Commit
    unit: MemoryUnit | None
    fields: list[str]  # changed since the previous version ([] for the first)

    def to_json(self) -> dict[str, Any]:
        return {**self.commit.to_json(), "changed": self.fields,
                "unit": self.unit.to_json() if self.unit else None}


def unit_versions(store: MemoryStore, uid: str) -> list[Version]:
    """Every version of one unit, oldest first, from the commits that changed its file.

    ``uid`` is a full id, or a unique prefix of a unit in the store now.
    """
    uid = uid.strip().lower()
    if not is_unit_id(uid):
        uid = store.get(uid).id
    path = files.unit_path(uid)
    commits = list(reversed(store.repo.log(paths=[path])))
    if not commits:
        raise NotFoundError(f"no memory with id {uid!r} in this store's history")
    data = dict(store.repo.cat(f"{c.sha}:{path}" for c in commits))
    versions: list[Version] = []
    previous: MemoryUnit | None = None
    for commit in commits:
        raw = data.get(f"{commit.sha}:{path}")
        unit = files.loads(raw, path) if raw is not None else None
        if unit is None:
            fields = ["removed"]
        elif previous is None:
            fields = [] if not versions else ["restored"]
        else:
            fields = changed_fields(previous, unit)
        versions.append(Version(commit, unit, fields))
        previous = unit
    return versions
