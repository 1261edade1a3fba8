"""What a plan reads: a snapshot of a cube, whole (a full run) or what changed since the last
run and its nearest neighbours (an incremental run), and what each run leaves for the next.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.errors import MemosError
from memos_cli.plaintext.sql import sql_str
from memos_cli.plaintext.units import MemoryUnit, parse_time
from memos_cli.scheduler.report import Scope

if TYPE_CHECKING:
    from memos_cli.store.policy import ConsolidatePolicy
    from memos_cli.store.store import MemoryStore

# Incremental runs (see the package's docstring).
STATE_FILE = "consolidate.json"  # in the store's state dir: what the last run saw, per cube
STATE_FORMAT = 1  # in the policy's fingerprint: a planner that decides otherwise makes the next run full
NEIGHBOURS = 32  # nearest units looked up for each changed unit...
NEIGHBOURS_WIDE = 256  # ... or this many, when the 32nd is still about as alike as a step's similarity
NEIGHBOUR_SLACK = 0.02  # "about": the index's distances are approximate (int8 vectors)
# More changed units than FULL_MIN_CHANGED and than FULL_SHARE of the cube: a full run. A changed unit
# costs a nearest-neighbour search (about 5-10 ms at 100k units on 2 cores), a full run about 0.2 ms a unit.
FULL_MIN_CHANGED = 100
FULL_SHARE = 0.02
FULL_EVERY = timedelta(days=7)  # a full run at least this often (what the nearest-neighbour search missed)
COMPARE_MAX = 20_000  # changed files compared with their last version to set aside access counts
PLACEMENT = ("access_count", "last_accessed", "pinned")  # fields no planning step reads


# ---- the snapshot a plan is made from ------------------------------------------------


@dataclass
class Snapshot:
    """Active units of one cube, with their vectors (one row each, normalised): all of them (a full
    run), or, for an incremental run, those changed since the last run, their nearest neighbours, and
    what expiry and episodes look at (``compare``: the ids the duplicates and superseded steps compare).
    Every unit an action names is here, at the version the plan saw (applying checks it)."""

    cube: str
    units: list[MemoryUnit]
    vectors: np.ndarray
    compare: frozenset[str] | None = None  # None: every unit

    def rows(self, keep: Callable[[MemoryUnit], bool]) -> tuple[list[MemoryUnit], np.ndarray]:
        index = [i for i, u in enumerate(self.units) if keep(u)]
        return [self.units[i] for i in index], self.vectors[index] if index else self.vectors[:0]

    def compares(self, uid: str) -> bool:
        return self.compare is None or uid in self.compare


def cubes(store: MemoryStore) -> list[str]:
    """The cubes that have units, in order."""
    if not store.table.exists():
        return []
    import pyarrow.compute as pc

    return sorted(pc.unique(store.table.select(None, columns=["cube"]).column("cube")).to_pylist())


def snapshot(store: MemoryStore, cube: str) -> Snapshot:
    """Every active unit of the cube (a full run)."""
    from memos_cli.plaintext.sql import sql_str

    return _snapshot_of(store, cube, store.table.select(f"status = 'active' AND cube = {sql_str(cube)}"))


def _snapshot_of(store: MemoryStore, cube: str, table: Any, compare: frozenset[str] | None = None) -> Snapshot:
    """A snapshot of these rows (all columns), each unit once."""
    from memos_cli.plaintext.table import from_row

    if table.num_rows == 0:
        return Snapshot(cube, [], np.zeros((0, store.table.dim or 1), dtype=np.float32), compare)
    ids = table.column("id").to_pylist()
    if len(set(ids)) < len(ids):  # rows read by more than one query
        first = {uid: i for i, uid in reversed(list(enumerate(ids)))}
        table = table.take(sorted(first.values()))
    # The fixed-size list column's values, as one (n, dim) array: no object per row.
    column = table.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32, copy=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors /= np.where(norms > 0, norms, 1.0)
    table = table.drop_columns(["vector"])
    units = [from_row(row) for row in table.to_pylist()]
    del table
    pending = store.pending_access()  # reads not yet folded into the units count for heat
    for unit in units:
        if unit.id in pending:
            n, last = pending[unit.id]
            unit.access_count += n
            unit.last_accessed = max(filter(None, [unit.last_accessed, parse_time(last)]))
    return Snapshot(cube, units, vectors, compare)


# ---- incremental runs: what changed since the last run, against its neighbours ----------------


def fingerprint(store: MemoryStore, policy: ConsolidatePolicy) -> str:
    """What the plans depend on besides the units: the planning steps' policy, the embedding model (and
    the chat model, when it judges), and the planner's own format. Another one means a full run."""
    import hashlib
    from dataclasses import asdict

    parts: dict[str, Any] = {name: asdict(getattr(policy, name))
                             for name in ("duplicates", "superseded", "expiry", "episodes")}
    parts["embedding"] = store.config.embedding_model
    parts["format"] = [STATE_FORMAT, NEIGHBOURS, NEIGHBOURS_WIDE]
    if policy.superseded.judge == "llm":
        from memos_cli.chat.session import chat_settings

        parts["chat"] = list(chat_settings(store, None, None))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_state(store: MemoryStore) -> dict[str, dict[str, Any]]:
    """What the last runs recorded, per cube (``STATE_FILE`` in the state dir); {} if nothing usable."""
    try:
        data = json.loads((store.state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = data.get("cubes") if isinstance(data, dict) else None
    return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def save_state(store: MemoryStore, entries: dict[str, dict[str, Any]]) -> None:
    """Write the state file atomically (a reader sees the old one or the new one, whole), private."""
    from memos_cli.plaintext.files import write_private

    path = store.state_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    write_private(tmp, (json.dumps({"cubes": entries}, indent=1, sort_keys=True) + "\n").encode())
    os.replace(tmp, path)


def plan_scopes(store: MemoryStore, chosen: list[str], state: dict[str, dict[str, Any]], policy_key: str,
                seen: str | None, now: datetime, full: bool = False) -> dict[str, Scope]:
    """For each cube: a full run, with why, or an incremental one from the commit the last run saw."""
    out: dict[str, Scope] = {}
    since: dict[str, list[str]] = {}  # the last run's commit -> the cubes that go on from it
    for cube in chosen:
        entry = state.get(cube) or {}
        old, full_at = entry.get("commit"), _time_or_none(entry.get("full_at"))
        if full:
            out[cube] = Scope("full", "asked for (--full)")
        elif not entry:
            out[cube] = Scope("full", "no earlier run to go on from")
        elif entry.get("policy") != policy_key:
            out[cube] = Scope("full", "the policy (or the embedding model) changed since the last run")
        elif full_at is None or now - full_at > FULL_EVERY:
            out[cube] = Scope("full", f"the last full run is more than {FULL_EVERY.days} days old")
        elif seen is None or not isinstance(old, str) or not re.fullmatch(r"[0-9a-f]{40}", old):
            out[cube] = Scope("full", "no commit to go on from")
        else:
            since.setdefault(old, []).append(cube)
    for old, names in since.items():
        assert seen is not None
        if old != seen and store.repo.probe(["merge-base", "--is-ancestor", old, seen]).returncode != 0:
            for cube in names:
                out[cube] = Scope("full", "the last run's commit is no longer in history (a purge, or a rewrite)")
            continue
        ids = changed_units(store, old, seen) if old != seen else set()
        retry = {i for cube in names for i in state[cube].get("retry", []) if isinstance(i, str)}
        where = _active_cubes(store, ids | retry)
        for cube in names:
            mine = sorted(i for i, c in where.items() if c == cube)
            if len(mine) > FULL_MIN_CHANGED:
                total = store.table.count(f"status = 'active' AND cube = {sql_str(cube)}")
                if len(mine) > FULL_SHARE * total:
                    out[cube] = Scope("full", f"{len(mine)} of its {total} units changed since the last run")
                    continue
            out[cube] = Scope("incremental", since=old, changed=mine)
    return {cube: out[cube] for cube in chosen}


def changed_units(store: MemoryStore, old: str, new: str) -> set[str]:
    """Ids of the units whose file was added, or changed in more than placement (access counts,
    pinning), between two commits."""
    from memos_cli.plaintext import files

    entries = store.repo.changed(old, new, files.UNITS_DIR)
    ids: set[str] = set()
    both: dict[str, str] = {}  # path -> id: in both commits, to compare
    for status, path in entries:
        uid = files.id_of(path)
        if uid is None or status == "D":
            continue  # a removed unit (purged) leaves nothing to compare
        if status == "M" and len(entries) <= COMPARE_MAX:
            both[path] = uid
        else:
            ids.add(uid)
    if both:
        blobs = dict(store.repo.cat(f"{rev}:{p}" for p in both for rev in (old, new)))
        for path, uid in both.items():
            before, after = _content(blobs.get(f"{old}:{path}")), _content(blobs.get(f"{new}:{path}"))
            if before is None or before != after:
                ids.add(uid)
    return ids


def _content(data: bytes | None) -> dict[str, Any] | None:
    """A unit file's fields but those of placement, or None."""
    try:
        found = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    return {k: v for k, v in found.items() if k not in PLACEMENT}


def _active_cubes(store: MemoryStore, ids: set[str]) -> dict[str, str]:
    """id -> cube, for those of these units that are active."""
    out: dict[str, str] = {}
    listed = sorted(ids)
    for start in range(0, len(listed), 500):
        chunk = ",".join(sql_str(i) for i in listed[start:start + 500])
        table = store.table.select(f"status = 'active' AND id IN ({chunk})", columns=["id", "cube"])
        out.update(zip(table.column("id").to_pylist(), table.column("cube").to_pylist(), strict=True))
    return out


def incremental_snapshot(store: MemoryStore, cube: str, scope: Scope, policy: ConsolidatePolicy,
                         now: datetime) -> Snapshot:
    """The units an incremental plan needs: the changed ones and their nearest neighbours (for
    duplicates and superseded facts), the units with the same ``meta.subject`` as a changed one,
    units past their expiry, and (when summarising) old episodes."""
    import pyarrow as pa

    from memos_cli.plaintext.sql import sql_time

    active = f"status = 'active' AND cube = {sql_str(cube)}"
    changed = _snapshot_of(store, cube, _select_ids(store, active, scope.changed))
    compare = {u.id for u in changed.units}
    floors = [p.similarity for p in (policy.duplicates, policy.superseded) if p.enabled]
    if floors and changed.units:
        compare |= _neighbours(store, active, changed.vectors, min(floors))
    if policy.superseded.enabled:
        compare |= _same_subject(store, active, changed.units, policy.superseded.kinds)
    tables = [_select_ids(store, active, sorted(compare))]
    more = []
    if policy.expiry.enabled:
        more.append(f"expires_at IS NOT NULL AND expires_at <= {sql_time(now)}")
    if policy.episodes.summarise:
        cutoff = sql_time(now - timedelta(days=policy.episodes.older_than_days))
        more.append(f"kind = 'episode' AND ((time IS NOT NULL AND time < {cutoff}) "
                    f"OR (time IS NULL AND created_at < {cutoff}))")
    if more:
        tables.append(store.table.select(f"{active} AND ((" + ") OR (".join(more) + "))"))
    tables = [t for t in tables if t.num_rows]
    table = pa.concat_tables(tables) if tables else _empty(store)
    return _snapshot_of(store, cube, table, frozenset(compare))


def _select_ids(store: MemoryStore, where: str, ids: list[str]) -> Any:
    """Rows (all columns) of these units that also match ``where``."""
    import pyarrow as pa

    parts = [store.table.select(f"{where} AND id IN ({','.join(sql_str(i) for i in ids[start:start + 500])})")
             for start in range(0, len(ids), 500)]
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else _empty(store)


def _empty(store: MemoryStore) -> Any:
    return store.table.read(lambda ds: ds.schema.empty_table())


def _neighbours(store: MemoryStore, where: str, vectors: np.ndarray, floor: float) -> set[str]:
    """The ``NEIGHBOURS`` nearest units (matching ``where``) of each vector, through the table's vector
    index; ``NEIGHBOURS_WIDE`` when even the last of those is about as alike as ``floor``."""
    from memos_cli.plaintext.table import VECTOR_NPROBES

    found: set[str] = set()
    for q in vectors:
        k = NEIGHBOURS
        while True:
            nearest = {"column": "vector", "q": q, "k": k, "metric": "cosine", "nprobes": VECTOR_NPROBES}
            hits = store.table.read(lambda ds, nearest=nearest: ds.to_table(
                columns=["id"], filter=where, prefilter=True, nearest=nearest))
            distances = hits.column("_distance").to_pylist()
            if k < NEIGHBOURS_WIDE and len(distances) == k and 1.0 - distances[-1] >= floor - NEIGHBOUR_SLACK:
                k = NEIGHBOURS_WIDE  # crowded: more of them may be alike enough
                continue
            found.update(hits.column("id").to_pylist())
            break
    return found


def _same_subject(store: MemoryStore, where: str, units: list[MemoryUnit], kinds: tuple[str, ...]) -> set[str]:
    """Open units with the same ``meta.subject`` (and user) as one of these: the superseded rule links
    them whatever their cosine, so the vector index may not find them."""
    from memos_cli.plaintext.table import from_row
    from memos_cli.scheduler.supersede import meta_subject

    wanted = {(u.user, key) for u in units if u.kind in kinds and u.valid_to is None
              and (key := meta_subject(u)) is not None}
    if not wanted:
        return set()
    table = store.table.select(f"{where} AND valid_to IS NULL AND meta LIKE '%subject%'",
                               columns=["id", "text", "user", "meta"])
    return {u.id for u in map(from_row, table.to_pylist()) if (u.user, meta_subject(u)) in wanted}


def _time_or_none(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except MemosError:
        return None
