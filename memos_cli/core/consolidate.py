"""The scheduler: what ``memos consolidate`` does to each cube, from cron.

One run, per cube, in this order (each step is a table of ``[consolidate.*]``
in memos.toml, see ``policy``):

1. **expiry**: active units past ``expires_at`` are archived (or forgotten).
2. **duplicates** (``dedupe``): each group merges into its oldest unit, which
   takes the union of the group's tags and sources, the highest importance,
   the summed access counts and the ids it absorbed (``meta.merged``); the
   others are archived with ``meta.merged_into`` pointing to it.
3. **superseded** (``supersede``): a newer fact about the same subject closes
   the older one's validity (``valid_to``, ``meta.superseded_by``) and points
   to it (``supersedes``). The older unit stays active, so "what was it
   before" can still be recalled; recall ranks closed facts lower.
4. **episodes** (off by default): old conversation turns of one session are
   summarised by the chat model into a ``summary`` unit whose sources are the
   turns, which are archived (``meta.summarised_into``).
5. **heat**: the ``activation_top`` hottest units of the cube (pinned ones
   always, units unused for ``cold_after_days`` never) make up its activation
   memory; its KV cache is rebuilt when that set changed. Units that became
   hot are appended to the block (only they are prefilled), and those that
   cooled stay in it, until more than ``activation_top // 2`` have cooled:
   then it is rebuilt in heat order.
6. **compaction**: after a run that changed many units (``COMPACT_CHANGED``, or
   ``COMPACT_SHARE`` of a small store), or when the table has many fragments:
   LanceDB compaction and index refresh, git repack; orphaned cache files are
   removed after every run.

Nothing is ever deleted (expiry with ``action = "delete"`` forgets, which is a
status too), so rollback and ``show --history`` keep working.

**Incremental runs.** A routine run (hourly, from cron) reads only what
changed. After each run that is not a dry run, ``consolidate.json`` in the
store's state dir (``.git/memos``, not versioned; written atomically) records
per cube the commit the run went on from and a fingerprint of what plans
depend on besides the units (the planning steps' policy, the embedding model,
the chat model when it judges, the planner's format). The next run of a cube
with the same fingerprint, whose recorded commit is still in history, is
incremental:

- *what changed*: the unit files added or changed between that commit and
  the one the search table holds now (``git diff-tree`` of ``units/``), less
  those whose change is only placement (access counts, pinning: no step reads
  them), plus the units of actions skipped at the last apply; only the ones
  still active in the cube count;
- *duplicates and superseded facts* compare those units and their nearest
  neighbours in the cube (``NEIGHBOURS`` each through the table's vector
  index, filtered to the cube's active units; ``NEIGHBOURS_WIDE`` when the
  last of those is still about as alike as a step's similarity threshold),
  plus the open units with the same ``meta.subject`` (the rule links those
  whatever their cosine). The steps run unchanged on that small set, so a
  group gets the decisions a full run would make for it (survivor = oldest,
  earliest closer, ...), and a pair of neighbours that a full run's
  approximate search had missed is merged too;
- *expiry* is a filtered read (``expires_at <= now``, active), *episodes* a
  filtered read of the cube's old episodes; *heat* reads a few scalar
  columns of every active unit (``activation.hot_units``), and the chat model
  is loaded only when the hot set changed.

What the run goes on from next time: its own last commit when its commits
follow the commit it saw with no other commit between (what they changed is
what it decided), else the commit it saw. Anything uncertain means a full
run, with the reason in ``--json`` (``scope``): no state, a recorded commit
no longer in history (a purge, a rewrite), another fingerprint, more than
``FULL_MIN_CHANGED`` units and ``FULL_SHARE`` of the cube changed, a last
full run more than ``FULL_EVERY`` ago (what the approximate searches missed
is found then), ``--full``. A cube where a step could not run (no model) is
not moved on, and one whose duplicate passes had not converged goes full.
The search is approximate where a full run's is too: the vector index finds
about 99.5% of the exact neighbours.

**The LLM judge's verdicts** (``judge = "llm"``) are kept in ``judge.jsonl``
in the state dir, keyed by both units' id and version and by the model file
and prompt, so a pair is put to the model once (``--json``: ``judge``,
asked and remembered).

Concurrency: the plan is made from a snapshot without the store's lock (the
slow part: reading vectors, comparing, asking the model), then applied in
slices (``_apply``): each slice is one transaction and one commit, sized to
hold the store's lock about ``SLICE_SECONDS``, and actions that share a unit
go in one slice; a routine run is one slice. Under the lock every unit an
action touches is read again, and an action whose units changed meanwhile is
skipped (the next run looks again); units added meanwhile are simply not in
this run. So ``memos add`` from other processes waits at most for one slice,
never for the planning or the whole run. Two runs never overlap: a second one waits for
the first (``consolidate.lock``), up to the lock timeout, then says who holds it.
A second run right after the first finds nothing to do and makes no commit.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LockedError, MemosError, NotFoundError, UsageError
from .lock import StoreLock
from .units import MemoryUnit, build_unit, iso, parse_time, utcnow

if TYPE_CHECKING:
    from ..models.generator import Generator
    from .policy import ConsolidatePolicy
    from .store import MemoryStore

COMPACT_FRAGMENTS = 32  # any run compacts a table with this many (store.upkeep keeps 15 a level)
COMPACT_CHANGED = 1000  # a run that changed at least this many units (or COMPACT_SHARE of them) compacts
COMPACT_SHARE = 0.05
DEDUPE_PASSES = 5  # at most, above dedupe.EXACT_MAX units (see Planner.duplicates)
JUDGE_PAIRS = 200  # candidate pairs the LLM judge is asked about per cube and run
SUMMARY_TOKENS = 160
SUMMARY_PROMPT_ROOM = 256  # tokens of the context kept free for the summary
ACTIONS = ("expire", "merge", "supersede", "summarise", "promote", "demote", "refresh")
HEAT_ACTIONS = ("promote", "demote", "refresh")  # activation memory: derived data, no commit
# Incremental runs (see the module's docstring).
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
VERDICTS_FILE = "judge.jsonl"  # in the state dir: the LLM judge's verdicts
VERDICTS_MAX = 20_000  # verdicts kept (the newest); about 3 MB
# Applying a plan: slices of about SLICE_SECONDS of lock each, sized from the times the slices so far
# took (units per slice between SLICE_MIN and SLICE_MAX, SLICE_FIRST to start), SLICE_PAUSE apart.
SLICE_SECONDS = 0.8
SLICE_FIRST = 200
SLICE_MIN = 20
SLICE_MAX = 20_000
SLICE_PAUSE = 0.1


@dataclass
class Action:
    """One thing the run does (or, with --dry-run, would do)."""

    action: str  # one of ACTIONS
    cube: str
    units: list[str]  # the target first: the survivor, the newer fact, the summary's turns...
    reason: str
    status: str = "planned"  # planned, done, skipped
    note: str = ""  # why it was skipped
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # what applying needs

    def to_json(self) -> dict[str, Any]:
        out = {"action": self.action, "cube": self.cube, "units": self.units, "reason": self.reason,
               "status": self.status}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Report:
    """What a run did: its actions, its commit, the steps it skipped and why."""

    cubes: list[str]
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps that could not run, with why
    maintenance: list[str] = field(default_factory=list)  # compaction, cache files removed
    started: datetime = field(default_factory=utcnow)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, over all cubes
    commits: list[str] = field(default_factory=list)  # one per slice of the changes
    judged: int = 0  # pairs the LLM judge of superseded facts asked the chat model about
    remembered: int = 0  # pairs it did not ask again: their verdict was kept from an earlier run
    scopes: dict[str, Scope] = field(default_factory=dict)  # what the plan of each cube read

    @property
    def commit(self) -> str | None:
        """The run's last commit (None: it made none)."""
        return self.commits[-1] if self.commits else None

    def timed(self, phase: str, since: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - since

    @property
    def changed(self) -> bool:
        """Whether the run changed the memory or its activation caches."""
        return any(a.status == "done" for a in self.actions)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:  # merges, supersessions... count as one each; promotions count their units
            if a.status == ("planned" if self.dry_run else "done"):
                out[a.action] = out.get(a.action, 0) + (len(a.units) if a.action in ("promote", "demote") else 1)
        return out

    def summary(self) -> str:
        """One line: what was done (or would be), or that nothing was."""
        counts = self.counts()
        verbs = {"expire": "expired", "merge": "merged", "supersede": "superseded", "summarise": "summarised",
                 "promote": "promoted", "demote": "demoted", "refresh": "refreshed"}
        parts = [f"{verbs[a]} {counts[a]}" for a in ACTIONS if counts.get(a)]
        text = ", ".join(parts) if parts else "nothing to do"
        if self.dry_run and parts:
            text = "would have " + text
        skipped = sum(1 for a in self.actions if a.status == "skipped")
        if skipped:
            text += f"; {skipped} skipped"
        if self.skipped:
            text += f"; {len(self.skipped)} step{'s' if len(self.skipped) != 1 else ''} not run"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cubes": self.cubes,
            "summary": self.summary(),
            "counts": self.counts(),
            "commit": self.commit,
            "commits": self.commits,
            "actions": [a.to_json() for a in self.actions],
            "skipped": self.skipped,
            "maintenance": self.maintenance,
            "started": iso(self.started),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "mode": self.mode,
            "scope": {cube: scope.to_json() for cube, scope in self.scopes.items()},
            "judge": {"asked": self.judged, "remembered": self.remembered},
        }

    @property
    def mode(self) -> str:
        """"incremental" when every cube's plan read only what changed since the last run, "full" when
        every one read the whole cube, "mixed" otherwise."""
        modes = {s.mode for s in self.scopes.values()}
        return modes.pop() if len(modes) == 1 else "mixed" if modes else "full"


class StepSkipped(MemosError):
    """A step that cannot run this time (its model is missing); the others go on."""


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
    from .table import sql_str

    return _snapshot_of(store, cube, store.table.select(f"status = 'active' AND cube = {sql_str(cube)}"))


def _snapshot_of(store: MemoryStore, cube: str, table: Any, compare: frozenset[str] | None = None) -> Snapshot:
    """A snapshot of these rows (all columns), each unit once."""
    from .table import from_row

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


@dataclass
class Scope:
    """How much of a cube one run's plan reads, and why."""

    mode: str  # "full" or "incremental"
    reason: str = ""  # full: why
    since: str | None = None  # incremental: the commit the last run saw
    changed: list[str] = field(default_factory=list)  # incremental: the cube's active units changed since
    compared: int = 0  # units the duplicates and superseded steps compared

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "full":
            out["reason"] = self.reason
        else:
            out["since"] = self.since
            out["changed"] = len(self.changed)
        out["compared"] = self.compared
        return out


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
        from .chat import chat_settings

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
    from .files import write_private

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
                total = store.table.count(f"status = 'active' AND cube = {_sql(cube)}")
                if len(mine) > FULL_SHARE * total:
                    out[cube] = Scope("full", f"{len(mine)} of its {total} units changed since the last run")
                    continue
            out[cube] = Scope("incremental", since=old, changed=mine)
    return {cube: out[cube] for cube in chosen}


def changed_units(store: MemoryStore, old: str, new: str) -> set[str]:
    """Ids of the units whose file was added, or changed in more than placement (access counts,
    pinning), between two commits."""
    from . import files

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
        chunk = ",".join(_sql(i) for i in listed[start:start + 500])
        table = store.table.select(f"status = 'active' AND id IN ({chunk})", columns=["id", "cube"])
        out.update(zip(table.column("id").to_pylist(), table.column("cube").to_pylist(), strict=True))
    return out


def incremental_snapshot(store: MemoryStore, cube: str, scope: Scope, policy: ConsolidatePolicy,
                         now: datetime) -> Snapshot:
    """The units an incremental plan needs: the changed ones and their nearest neighbours (for
    duplicates and superseded facts), the units with the same ``meta.subject`` as a changed one,
    units past their expiry, and (when summarising) old episodes."""
    import pyarrow as pa

    from .table import sql_time

    active = f"status = 'active' AND cube = {_sql(cube)}"
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

    parts = [store.table.select(f"{where} AND id IN ({','.join(_sql(i) for i in ids[start:start + 500])})")
             for start in range(0, len(ids), 500)]
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else _empty(store)


def _empty(store: MemoryStore) -> Any:
    return store.table.read(lambda ds: ds.schema.empty_table())


def _neighbours(store: MemoryStore, where: str, vectors: np.ndarray, floor: float) -> set[str]:
    """The ``NEIGHBOURS`` nearest units (matching ``where``) of each vector, through the table's vector
    index; ``NEIGHBOURS_WIDE`` when even the last of those is about as alike as ``floor``."""
    from .table import VECTOR_NPROBES

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
    from .supersede import _meta_subject
    from .table import from_row

    wanted = {(u.user, key) for u in units if u.kind in kinds and u.valid_to is None
              and (key := _meta_subject(u)) is not None}
    if not wanted:
        return set()
    table = store.table.select(f"{where} AND valid_to IS NULL AND meta LIKE '%subject%'",
                               columns=["id", "text", "user", "meta"])
    return {u.id for u in map(from_row, table.to_pylist()) if (u.user, _meta_subject(u)) in wanted}


def _sql(value: str) -> str:
    from .table import sql_str

    return sql_str(value)


def _time_or_none(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except MemosError:
        return None


# ---- the chat model, loaded once, only if a step needs it ---------------------------------


class ModelSlot:
    """The chat model of ``[chat]``, loaded on first use; a load that fails is remembered."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._gen: Generator | None = None
        self._error: str | None = None
        self._loading: threading.Thread | None = None

    def preload(self) -> None:
        """Start loading the model in a thread, for a step that will likely need it: llama.cpp reads
        the file without the GIL, so the run goes on meanwhile (``get`` waits for it)."""
        if self._gen is not None or self._error is not None or self._loading is not None:
            return
        from ..models.generator import load_generator
        from ..models.runtime import import_llama_cpp
        from .chat import chat_settings

        spec, size = chat_settings(self.store, None, None)
        try:
            import_llama_cpp()  # here: two threads importing at once can deadlock on import locks
        except MemosError:
            return  # get() says why

        def load() -> None:
            try:
                self._gen = load_generator(spec, n_ctx=size)
            except MemosError as exc:
                self._error = str(exc)
            except Exception as exc:  # noqa: BLE001 - told by get(), in the caller's thread
                self._error = f"{type(exc).__name__}: {exc}"

        self._loading = threading.Thread(target=load, daemon=True)
        self._loading.start()

    def _wait(self) -> None:
        if self._loading is not None:
            self._loading.join()
            self._loading = None

    def get(self, why: str) -> Generator:
        self._wait()
        if self._gen is None and self._error is None:
            from ..models.generator import load_generator
            from .chat import chat_settings

            spec, size = chat_settings(self.store, None, None)
            try:
                self._gen = load_generator(spec, n_ctx=size)
            except MemosError as exc:
                self._error = str(exc)
        if self._gen is None:
            raise StepSkipped(f"{why}: the chat model cannot be loaded ({self._error})")
        return self._gen

    def identity(self, why: str) -> str:
        """The chat model file's sha256, without loading it (``StepSkipped`` when there is no model)."""
        from ..models.generator import identify
        from .chat import chat_settings

        spec, size = chat_settings(self.store, None, None)
        try:
            return identify(spec, size).sha256
        except MemosError:
            self.get(why)  # says why, as a load would
            raise

    def close(self) -> None:
        self._wait()
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def complete(gen: Generator, prompt: str, max_tokens: int, stop: list[str]) -> str:
    """The model's greedy continuation of a plain prompt."""
    tokens = gen.tokenize(prompt, head=True)
    gen.prefill([])  # a fresh context: nothing of a previous prompt is reused by mistake
    return "".join(gen.stream(tokens, temperature=0.0, max_tokens=max_tokens, stop=stop)).strip()


class Verdicts:
    """The LLM judge's verdicts, kept so that it never asks about the same pair twice: lines of
    ``VERDICTS_FILE`` in the state dir, keyed by both units' id and version and by the model file's
    sha256 and the prompt's (a unit that changes gets a new version, and so a new question). Ids,
    versions and yes/no only: no text of the memory, so purge has nothing to remove here. The newest
    ``VERDICTS_MAX`` are kept."""

    def __init__(self, store: MemoryStore, model: str) -> None:
        import hashlib

        from .supersede import judge_prompt

        self.path = store.state_dir / VERDICTS_FILE
        prompt = hashlib.sha256(judge_prompt("", "").encode()).hexdigest()[:12]
        self.model = f"{model[:16]}/{prompt}"
        self.lines: list[str] = []
        self.known: dict[tuple[str, int, str, int], bool] = {}
        self.new: list[str] = []
        try:
            self.lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            pass
        for line in self.lines:
            try:
                r = json.loads(line)
                if r["model"] == self.model:
                    self.known[(r["older"], int(r["ov"]), r["newer"], int(r["nv"]))] = bool(r["replaces"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line

    def get(self, older: MemoryUnit, newer: MemoryUnit) -> bool | None:
        return self.known.get((older.id, older.version, newer.id, newer.version))

    def put(self, older: MemoryUnit, newer: MemoryUnit, replaces: bool) -> bool:
        self.known[(older.id, older.version, newer.id, newer.version)] = replaces
        self.new.append(json.dumps({"older": older.id, "ov": older.version, "newer": newer.id, "nv": newer.version,
                                    "model": self.model, "replaces": replaces}))
        return replaces

    def save(self) -> None:
        """Append the new verdicts (a run holds the run lock: no other run writes meanwhile)."""
        if not self.new:
            return
        from .files import FILE_MODE, write_private

        try:
            if len(self.lines) + len(self.new) <= VERDICTS_MAX:
                with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "ab") as f:
                    f.write("".join(line + "\n" for line in self.new).encode())
            else:  # keep the newest, rewritten atomically
                keep = (self.lines + self.new)[-VERDICTS_MAX // 2:]
                tmp = self.path.with_name(f".{VERDICTS_FILE}.tmp")
                write_private(tmp, "".join(line + "\n" for line in keep).encode())
                os.replace(tmp, self.path)
        except OSError:
            pass  # not kept: the judge asks again next time
        self.lines += self.new
        self.new = []


# ---- planning -----------------------------------------------------------------------


class Planner:
    """Works out the actions for one cube from its snapshot (no writes)."""

    def __init__(self, store: MemoryStore, policy: ConsolidatePolicy, models: ModelSlot, report: Report,
                 now: datetime) -> None:
        self.store, self.policy, self.models, self.report, self.now = store, policy, models, report, now
        self.incomplete: set[str] = set()  # cubes where a step could not run: the next run goes over them again
        self.unsettled: set[str] = set()  # cubes whose duplicate passes still found some at the last pass

    def plan(self, snap: Snapshot) -> list[Action]:
        used: set[str] = set()  # units archived by an earlier step take no part in later ones
        actions: list[Action] = []
        steps: list[tuple[str, Callable[[Snapshot, set[str]], list[Action]]]] = [
            ("expiry", self.expiry), ("duplicates", self.duplicates), ("superseded", self.superseded),
            ("episodes", self.episodes),
        ]
        for name, step in steps:
            since = time.perf_counter()
            try:
                found = step(snap, used)
            except StepSkipped as exc:
                self.report.skipped.append(f"{name} in cube {snap.cube}: {exc}")
                self.incomplete.add(snap.cube)
                continue
            finally:
                self.report.timed(name, since)
            actions += found
            for a in found:
                used.update(_archived(a))
        return actions

    def expiry(self, snap: Snapshot, used: set[str]) -> list[Action]:
        policy = self.policy.expiry
        if not policy.enabled:
            return []
        verb = "archived" if policy.action == "archive" else "forgotten"
        return [Action("expire", snap.cube, [u.id], f"expired at {u.expires_at:%Y-%m-%d %H:%M:%S}Z; {verb}",
                       extra={"to": "archived" if policy.action == "archive" else "deleted"})
                for u in snap.units if u.expires_at is not None and u.expires_at <= self.now]

    def duplicates(self, snap: Snapshot, used: set[str]) -> list[Action]:
        from .dedupe import EXACT_MAX, find_duplicates

        policy = self.policy.duplicates
        if not policy.enabled:
            return []
        # Above EXACT_MAX units the search is approximate (LSH), and which pairs it finds depends on
        # the units it is given: a pass without the duplicates of the last can find a few more. Passes
        # go on until one finds nothing, so the next run (the same units) finds nothing either.
        merged: dict[str, dict[str, str]] = {}  # survivor -> {duplicate: reason}
        gone = set(used)
        for _ in range(DEDUPE_PASSES):
            units, vectors = snap.rows(lambda u: u.id not in gone and snap.compares(u.id))
            groups = find_duplicates([u.id for u in units], [u.text for u in units], vectors,
                                     similarity=policy.similarity, text_similarity=policy.text_similarity)
            for g in groups:
                self.absorb(snap, merged, g.survivor, g.reasons)
                gone.update(g.duplicates)
            if not groups or len(units) <= EXACT_MAX:
                break
        else:
            self.unsettled.add(snap.cube)  # the next run reads the whole cube again
        return [Action("merge", snap.cube, [survivor, *dups],
                       "; ".join(f"{d[:10]}: {reason}" for d, reason in dups.items()))
                for survivor, dups in sorted(merged.items())]

    def absorb(self, snap: Snapshot, merged: dict[str, dict[str, str]], survivor: str, reasons: dict[str, str]) -> None:
        """Add a group of one dedupe pass to ``merged`` (survivor -> {duplicate: reason}). When a duplicate
        is the survivor of an earlier pass's group, that group joins this one: its members that are
        duplicates of this survivor itself (as within one pass), while the others are left alone. Never
        a chain (A into B, B into C), whose second merge would find B archived by the first."""
        absorbed = merged.setdefault(survivor, {})
        absorbed.update(reasons)
        for dup in reasons:
            for uid in merged.pop(dup, {}):
                reason = self._duplicate_of(snap, survivor, uid)
                if reason is not None:
                    absorbed[uid] = reason

    def _duplicate_of(self, snap: Snapshot, survivor: str, uid: str) -> str | None:
        """Why ``uid`` duplicates ``survivor`` (dedupe's test), or None."""
        from .dedupe import normalise, texts_agree

        rows = {u.id: i for i, u in enumerate(snap.units) if u.id in (survivor, uid)}
        a, b = snap.units[rows[survivor]], snap.units[rows[uid]]
        if normalise(a.text) == normalise(b.text):
            return "exact"
        policy = self.policy.duplicates
        cos = float(snap.vectors[rows[survivor]] @ snap.vectors[rows[uid]])
        agree, overlap = texts_agree(a.text, b.text, policy.text_similarity)
        return f"near (cosine {cos:.3f}, words {overlap:.2f})" if cos >= policy.similarity and agree else None

    def superseded(self, snap: Snapshot, used: set[str]) -> list[Action]:
        policy = self.policy.superseded
        if not policy.enabled:
            return []
        from . import supersede

        units, vectors = snap.rows(lambda u: u.id not in used and u.kind in policy.kinds and u.valid_to is None
                                   and snap.compares(u.id))
        if policy.judge == "rules":
            found = supersede.find_superseded(units, vectors, similarity=policy.similarity, kinds=policy.kinds)
        else:
            found = self._judged(units, vectors)
        return [Action("supersede", snap.cube, [s.newer, s.older], s.reason, extra={"closes_at": s.closes_at})
                for s in found]

    def _judged(self, units: list[MemoryUnit], vectors: np.ndarray) -> list[Any]:
        """The LLM judge: the chat model says whether each close pair is an update."""
        from . import supersede

        policy = self.policy.superseded
        pairs = supersede.candidate_pairs(units, vectors, similarity=policy.similarity, kinds=policy.kinds,
                                          limit=JUDGE_PAIRS)
        if not pairs:
            return []
        why = "the LLM judge of superseded facts"
        verdicts = Verdicts(self.store, self.models.identity(why))
        by_id = {u.id: u for u in units}
        closed: dict[str, Any] = {}  # older id -> its earliest replacement
        try:
            for older, newer, cos in pairs:
                if older in closed:
                    continue
                verdict = verdicts.get(by_id[older], by_id[newer])
                if verdict is None:
                    gen = self.models.get(why)
                    answer = complete(gen, supersede.judge_prompt(by_id[older].text, by_id[newer].text), 3, ["\n"])
                    self.report.judged += 1
                    verdict = verdicts.put(by_id[older], by_id[newer], bool(supersede.parse_verdict(answer)))
                else:
                    self.report.remembered += 1
                if verdict:
                    closed[older] = supersede.Supersession(older, newer, supersede.effective_time(by_id[newer]),
                                                           f"the chat model judged it an update (cosine {cos:.2f})")
        finally:
            if not self.report.dry_run:
                verdicts.save()
        return sorted(closed.values(), key=lambda s: (s.newer, s.older))

    def episodes(self, snap: Snapshot, used: set[str]) -> list[Action]:
        from . import episodes

        policy = self.policy.episodes
        if not policy.summarise:
            return []
        cutoff = self.now - timedelta(days=policy.older_than_days)
        units, _ = snap.rows(lambda u: u.id not in used)
        groups = episodes.sessions(units, cutoff, policy.min_episodes)
        if not groups:
            return []
        gen = self.models.get("summarising episodes")
        actions = []
        for session in groups:
            for part in episodes.fit(session.turns, gen.count, gen.n_ctx - SUMMARY_PROMPT_ROOM - SUMMARY_TOKENS):
                try:
                    text = complete(gen, episodes.summary_prompt(part), SUMMARY_TOKENS, ["\n\n"])
                except MemosError as exc:  # a single turn longer than the model's context
                    text, why = "", str(exc)
                else:
                    why = "the model wrote nothing"
                if not text:
                    self.report.skipped.append(f"episodes in cube {snap.cube}: no summary of {session.label}: {why}")
                    continue
                actions.append(Action("summarise", snap.cube, [u.id for u in part],
                                      f"{len(part)} turns of {session.label}", extra={"text": text}))
        return actions


# ---- heat: activation memory -------------------------------------------------------------


def projected_hot_set(store: MemoryStore, cube: str, policy: ConsolidatePolicy, now: datetime,
                      gone: set[str]) -> list[MemoryUnit]:
    """For a dry run: the heat block after the plan, from the store as it is (``gone``: the units the
    plan archives or closes). A real run selects again once the plan is applied."""
    from .activation import hot_units

    return hot_units(store, cube, policy.heat, now, leave_out=gone)


def plan_heat(store: MemoryStore, cube: str, hot: list[MemoryUnit], top: int, identity: Any,
              assess: bool = True) -> list[Action]:
    """Promote and demote: how the cube's heat block (``hot``: what it should hold) differs from the
    one built for this model; a block of the same units that went stale is refreshed (``assess``)."""
    from . import activation

    selection = activation.Selection(top=top)
    record = next((a for a in activation.records(store, cube) if a.selection == selection and a.matches(identity)),
                  None)
    before = [s["id"] for s in record.sources] if record is not None else []
    now_ids = [u.id for u in hot]
    actions = []
    entering = [i for i in now_ids if i not in before]
    leaving = [i for i in before if i not in now_ids]
    extra = {"selection": selection, "hot": hot}
    if record is not None and (entering or leaving) and _may_grow(store, record, hot, leaving, top, identity, assess):
        if not entering:
            return []  # only cooled units: they stay until the block is rebuilt
        kept = {u.id: u for u in store.get_many(before)}
        grown = [kept[i] for i in before] + [u for u in hot if u.id in entering]
        stay = f"; {len(leaving)} that cooled stay until it is rebuilt" if leaving else ""
        return [Action("promote", cube, entering, f"appended to activation memory (top {top} by heat{stay})",
                       extra={**extra, "grown": grown})]
    if entering:
        actions.append(Action("promote", cube, entering,
                              f"into activation memory (pinned, and the top {top} by heat)", extra=extra))
    if leaving:
        actions.append(Action("demote", cube, leaving, "out of activation memory: cooler, cold, closed or gone",
                              extra=extra))
    if assess and record is not None and not actions and now_ids:
        activation.assess(store, record, identity)
        if record.status != "current":
            actions.append(Action("refresh", cube, now_ids,
                                  f"activation memory rebuilt: it was {record.status} ({record.reason})", extra=extra))
    return actions


def _may_grow(store: MemoryStore, record: Any, hot: list[MemoryUnit], leaving: list[str], top: int,
              identity: Any, assess: bool) -> bool:
    """Whether a heat block may grow at its end instead of being rebuilt: it is current, its pinned
    units are still the pinned ones, and at most ``top // 2`` of its units have cooled out of the top.

    New units are the hottest (by recency), so a block in heat order changes at its start after every
    few adds, and a rebuild prefills all of it (about 1.4 s for 20 units on 2 cores). Grown at its end,
    only the new units are prefilled (``activation.build`` keeps the rest of the saved state); the
    units that cooled stay in it until enough have piled up for a rebuild, in heat order, to be due."""
    before = [s["id"] for s in record.sources]
    pinned = [u.id for u in hot if u.pinned]
    if before[:len(pinned)] != pinned or len(leaving) > top // 2:
        return False
    if assess:
        from . import activation

        activation.assess(store, record, identity)
        return record.status == "current"
    return True


# ---- the run --------------------------------------------------------------------------------


@contextmanager
def run_lock(store: MemoryStore) -> Iterator[None]:
    """One consolidate at a time per store: waits up to the lock timeout, then says who runs."""
    lock = StoreLock(store.run_lock_path, store._lock_for().timeout)
    try:
        lock.acquire()
    except LockedError:
        raise LockedError(f"another memos consolidate is running ({lock.holder().removeprefix('pid ')}); "
                          f"gave up waiting after {lock.timeout:g}s") from None
    try:
        yield
    finally:
        lock.release()


def consolidate(store: MemoryStore, *, cube: str | None = None, dry_run: bool = False, full: bool = False,
                progress: Callable[[str], None] | None = None) -> Report:
    """Plan and (unless ``dry_run``) apply one run of the scheduler; see the module's docstring.
    ``full``: read every cube whole, even where an incremental run would do."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    policy = store.config.consolidate  # a malformed policy fails here, before anything
    if not dry_run:
        store._check_writable()  # a store we may only read: one clear line, before the run's lock
    store._ensure_current()
    known = cubes(store)
    if cube is not None and cube not in known:
        raise NotFoundError(f"no cube {cube!r} in this store" + (f"; its cubes: {', '.join(known)}" if known
                                                                  else "; it has no memories yet"))
    chosen = [cube] if cube is not None else known
    report = Report(cubes=chosen, dry_run=dry_run)
    models = ModelSlot(store)
    guard = run_lock(store) if not dry_run else _nothing()
    try:
        with guard:
            now = utcnow()
            planner = Planner(store, policy, models, report, now)
            since = time.perf_counter()
            seen = store.table.marker().get("head")  # the table holds at least this commit's units
            state = load_state(store)
            policy_key = fingerprint(store, policy)
            report.scopes = plan_scopes(store, chosen, state, policy_key, seen, now, full)
            report.timed("changes", since)
            if not dry_run and policy.heat.activation_top and any(s.mode == "full" or s.changed
                                                                   for s in report.scopes.values()):
                models.preload()  # new units are the hottest: the heat step will likely need the chat model
            snaps = {}
            for name in chosen:
                say(f"planning cube {name}")
                since = time.perf_counter()
                scope = report.scopes[name]
                snaps[name] = snap = (snapshot(store, name) if scope.mode == "full"
                                      else incremental_snapshot(store, name, scope, policy, now))
                scope.compared = len(snap.units) if snap.compare is None else len(snap.compare)
                report.timed("read", since)
                report.actions += planner.plan(snap)
            since = time.perf_counter()
            identity = _identity(store, policy, report)
            top = policy.heat.activation_top
            if dry_run:
                for name in chosen:
                    if identity is not None:
                        gone = {u for a in report.actions if a.cube == name for u in _leaving(a)}
                        report.actions += plan_heat(store, name, projected_hot_set(store, name, policy, now, gone),
                                                    top, identity)
                report.timed("heat", since)
                return report
            say("applying")
            since = time.perf_counter()
            if identity is not None and _heat_may_change(store, report, chosen, policy, now, identity):
                models.preload()  # loads while the plan is applied
            report.timed("heat", since)
            since = time.perf_counter()
            _apply(store, report, snaps)
            report.timed("apply", since)
            _record(store, report, planner, state, policy_key, seen, now)
            since = time.perf_counter()
            if identity is not None:
                from .activation import Selection, select_units

                for name in chosen:  # from the memory as it is now, as `memos kv build --top` would
                    hot = select_units(store, name, Selection(top=top))
                    report.actions += plan_heat(store, name, hot, top, identity)
                _promote(store, report, models)
            report.timed("heat", since)
            if policy.compaction.enabled:
                say("compacting")
                since = time.perf_counter()
                _compact(store, report)
                report.timed("compaction", since)
            elif report.commits:
                store.upkeep(from_run=True)  # what the slices skipped
    finally:
        models.close()
        report.seconds = time.perf_counter() - started
    return report


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _heat_may_change(store: MemoryStore, report: Report, chosen: list[str], policy: ConsolidatePolicy,
                     now: datetime, identity: Any) -> bool:
    """Before applying a plan with edits: whether a heat block will likely be rebuilt after it (its
    projected hot set differs from the block's), so the chat model can load while the plan is applied."""
    if not any(a.action not in HEAT_ACTIONS for a in report.actions):
        return False  # nothing to apply: nothing to overlap with
    for name in chosen:
        gone = {u for a in report.actions if a.cube == name for u in _leaving(a)}
        hot = projected_hot_set(store, name, policy, now, gone)
        if any(a.action in ("promote", "demote") for a in plan_heat(store, name, hot, policy.heat.activation_top,
                                                                     identity, assess=False)):
            return True
    return False


def _record(store: MemoryStore, report: Report, planner: Planner, state: dict[str, dict[str, Any]],
            policy_key: str, seen: str | None, now: datetime) -> None:
    """After a run is applied: what the next run goes on from, per cube. That is the run's own last
    commit when its commits follow the one it saw with nothing between them (what they changed is
    what the run decided), else the commit it saw (the next run compares the units changed since, its
    own changes among them). The units of actions skipped at apply are compared again next time."""
    if seen is None:
        return
    went_on = seen
    commits = report.commits
    if commits:
        chain = store.repo.run(["rev-list", "--reverse", "--parents", f"{seen}..{commits[-1]}"]).split("\n")
        if [line.split() for line in chain if line] == [[c, p] for c, p in zip(commits, [seen, *commits], strict=False)]:
            went_on = commits[-1]
    entries = load_state(store)
    for cube in report.cubes:
        if cube in planner.incomplete:
            continue  # a step did not run: the next run goes over the same changes again
        if cube in planner.unsettled:
            entries.pop(cube, None)  # the next run is full
            continue
        scope = report.scopes[cube]
        retry = sorted({i for a in report.actions if a.cube == cube and a.status == "skipped"
                        and a.action not in HEAT_ACTIONS for i in a.units})
        full_at = iso(now) if scope.mode == "full" else (state.get(cube) or {}).get("full_at")
        entries[cube] = {"commit": went_on, "policy": policy_key, "at": iso(now), "full_at": full_at,
                         "retry": retry}
    try:
        save_state(store, entries)
    except OSError as exc:
        report.maintenance.append(f"the run could not be recorded for the next one ({exc}): it will read everything")


def _identity(store: MemoryStore, policy: ConsolidatePolicy, report: Report) -> Any:
    """The chat model's identity for the heat step; None when the step is off or cannot run."""
    if policy.heat.activation_top == 0:
        return None
    from ..models.generator import identify
    from .chat import chat_settings

    spec, size = chat_settings(store, None, None)
    try:
        return identify(spec, size)
    except MemosError as exc:
        report.skipped.append(f"heat: the activation memories were not rebuilt: {exc}")
        return None


def _archived(action: Action) -> list[str]:
    """The units an action archives (or forgets): they take no part in later steps."""
    if action.action in ("expire", "summarise"):
        return action.units
    if action.action == "merge":  # the duplicates
        return action.units[1:]
    return []


def _leaving(action: Action) -> list[str]:
    """The units an action archives or closes (the older fact): they leave activation memory."""
    return action.units[1:] if action.action == "supersede" else _archived(action)


def _apply(store: MemoryStore, report: Report, snaps: dict[str, Snapshot]) -> None:
    """The unit changes of the plan, in slices: each slice one transaction and one commit, sized so
    that the store's lock is held about ``SLICE_SECONDS`` at a time and writers get in between.

    Actions that share a unit go in the same slice. A run that changes little is one commit, as
    before; the commits of a bigger run carry the same ``Memos-Run`` trailer, and ``memos rollback``
    to the parent of the first one undoes the run.
    """
    edits = [a for a in report.actions if a.action not in HEAT_ACTIONS]
    if not edits:
        return
    new_units: dict[int, MemoryUnit] = {}
    for a in edits:  # summaries are built and embedded before the lock
        if a.action == "summarise":
            new_units[id(a)] = _summary_unit(a, {u.id: u for u in snaps[a.cube].units})
    if new_units:
        store.embed(list(new_units.values()))
    planned = {u.id: u.version for snap in snaps.values() for u in snap.units}
    # Not under the lock: the hand-edited files, whose actions are skipped (save() would refuse the slice).
    edited = set(store.hand_edited({i for a in edits for i in a.units}))
    for a in edits:
        touched = [i for i in a.units if i in edited]
        if touched:
            a.status, a.note = "skipped", f"{touched[0]}'s file has changes not committed with git; left alone"
    slices = _slices([a for a in edits if a.status == "planned"])
    run = iso(report.started)
    held: list[tuple[int, float]] = []  # (units, seconds) of each slice so far
    while slices:
        batch: list[Action] = []
        size = _slice_size(held)
        while slices and (not batch or sum(len(a.units) for a in batch) < size):
            batch += slices.pop(0)
        part = len(held) + 1 if slices or held else 0
        held.append((sum(len(a.units) for a in batch),
                     _apply_slice(store, report, batch, planned, new_units, run, part)))
        if slices:
            # Each slice (and each writer's add meanwhile) appends fragments; merged as after any write,
            # or every write would slow down. The indexes wait for the run's end.
            store.upkeep(from_run=True, fold=False)
            time.sleep(SLICE_PAUSE)  # writers polling for the lock (every lock.MAX_POLL at most) get in


def _slice_size(held: list[tuple[int, float]]) -> int:
    """Units for the next slice, so that it holds the lock about ``SLICE_SECONDS``.

    A slice costs a fixed part (the commit, the table's new version: about 0.45 s at 100k units)
    plus a part per unit; both are fitted by least squares to the last slices, which is why the
    second slice is half the first. Sizing by the last slice's time alone shrank slices to
    ``SLICE_MIN`` whenever the fixed part passed the target, and a first run at 100k took 663 slices.
    """
    if not held:
        return SLICE_FIRST
    last = held[-1][0]
    if len(held) == 1:
        return max(SLICE_MIN, last // 2)
    recent = held[-8:]
    mean_n = sum(n for n, _ in recent) / len(recent)
    mean_t = sum(t for _, t in recent) / len(recent)
    spread = sum((n - mean_n) ** 2 for n, _ in recent)
    if spread == 0:  # every recent slice the same size (held at a bound): keep it
        return last
    per_unit = max(1e-6, sum((n - mean_n) * (t - mean_t) for n, t in recent) / spread)
    fixed = min(max(0.0, mean_t - per_unit * mean_n), min(t for _, t in recent))
    # Sizes close together and noisy times can fit a per-unit cost near zero, and so a huge slice
    # (at 100k one jumped to 8,800 units and held the lock 10.6 s): grow by half at most per slice.
    wanted = int((SLICE_SECONDS - fixed) / per_unit)
    return max(SLICE_MIN, min(SLICE_MAX, wanted, last + max(last // 2, SLICE_MIN)))


def _slices(actions: list[Action]) -> list[list[Action]]:
    """The actions grouped so that two actions touching one unit are in one group, in plan order."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a in actions:
        for uid in a.units[1:]:
            parent[root(uid)] = root(a.units[0])
    groups: dict[str, list[Action]] = {}
    for a in actions:
        groups.setdefault(root(a.units[0]), []).append(a)
    return list(groups.values())


def _summary_unit(action: Action, turns: dict[str, MemoryUnit]) -> MemoryUnit:
    parts = [turns[i] for i in action.units]
    meta: dict[str, Any] = {"summarises": len(parts)}
    if parts[0].meta.get("session"):
        meta["session"] = parts[0].meta["session"]
    return build_unit(
        action.extra["text"], kind="summary", cube=action.cube, user=parts[0].user or None,
        tags=sorted({t for u in parts for t in u.tags}), time=parts[0].time or parts[0].created_at,
        meta=meta, sources=[{"unit": u.id} for u in parts])


def _apply_slice(store: MemoryStore, report: Report, edits: list[Action], planned: dict[str, int],
                 new_units: dict[int, MemoryUnit], run: str, part: int) -> float:
    """One slice of the plan in one transaction; returns how long it held the lock (seconds)."""
    cube_names = ",".join(sorted({a.cube for a in edits}))
    held_since = 0.0
    with store.transaction("consolidate", cube=cube_names) as txn:
        held_since = time.perf_counter()
        txn.skip_upkeep = True  # _apply merges fragments between slices; the run's end does the rest
        involved = sorted({i for a in edits for i in a.units})
        current = {u.id: u for u in store._units_by_id(involved)}
        changed: dict[str, MemoryUnit] = {}
        now = utcnow()

        def take(uid: str) -> MemoryUnit:
            return changed.setdefault(uid, current[uid])

        for a in edits:
            moved = [i for i in a.units if i not in current or current[i].status != "active"
                     or current[i].version != planned.get(i)]
            if moved:
                a.status, a.note = "skipped", f"{moved[0]} changed while the run was planned; the next run looks again"
                continue
            if a.action == "expire":
                unit = take(a.units[0])
                unit.status = a.extra["to"]
                unit.pinned = False
            elif a.action == "merge":
                _merge(take(a.units[0]), [take(i) for i in a.units[1:]])
            elif a.action == "supersede":
                newer, older = take(a.units[0]), take(a.units[1])
                older.valid_to = a.extra["closes_at"]
                older.meta = {**older.meta, "superseded_by": newer.id}
                newer.supersedes = older.id
            elif a.action == "summarise":
                summary = new_units[id(a)]
                for uid in a.units:
                    turn = take(uid)
                    turn.status = "archived"
                    turn.pinned = False
                    turn.meta = {**turn.meta, "summarised_into": summary.id}
                store.save(txn, [summary], new=True)
                a.units = [summary.id, *a.units]
            a.status = "done"
        for unit in changed.values():
            unit.version += 1
            unit.updated_at = now
        store.save(txn, list(changed.values()))
        done = [a for a in edits if a.status == "done"]
        txn.ids = sorted(changed) + [a.units[0] for a in done if a.action == "summarise"]
        txn.summary = Report(cubes=[], dry_run=False, actions=done).summary() + (f" (part {part})" if part else "")
        txn.details += [f"{a.action} {' '.join(a.units)}: {a.reason}" for a in done]
        txn.trailers["Memos-Run"] = run
    if txn.commit:
        report.commits.append(txn.commit)
    return time.perf_counter() - held_since


def _merge(survivor: MemoryUnit, others: list[MemoryUnit]) -> None:
    group = [survivor, *others]
    survivor.tags = list(dict.fromkeys(t for u in group for t in u.tags))
    sources: list[dict[str, Any]] = []
    for u in group:
        for s in u.sources:
            if s not in sources:
                sources.append(s)
    survivor.sources = sources
    survivor.importance = max(u.importance for u in group)
    survivor.access_count = sum(u.access_count for u in group)
    survivor.last_accessed = max((u.last_accessed for u in group if u.last_accessed), default=None)
    survivor.pinned = any(u.pinned for u in group)
    expiries = [u.expires_at for u in group]
    survivor.expires_at = None if None in expiries else max(e for e in expiries if e is not None)
    survivor.meta = {**survivor.meta, "merged": list(dict.fromkeys([*survivor.meta.get("merged", []),
                                                                      *(u.id for u in others)]))}
    for u in others:
        u.status = "archived"
        u.pinned = False
        u.meta = {**u.meta, "merged_into": survivor.id}


def _promote(store: MemoryStore, report: Report, models: ModelSlot) -> None:
    """Rebuild each cube's heat block whose set changed (derived data: no commit)."""
    from . import activation

    for cube in dict.fromkeys(a.cube for a in report.actions if a.action in HEAT_ACTIONS):
        actions = [a for a in report.actions if a.cube == cube and a.action in HEAT_ACTIONS]
        selection = actions[0].extra["selection"]
        try:
            if not actions[0].extra["hot"]:
                gone = [r.id for r in activation.records(store, cube) if r.selection == selection]
                activation.remove(store, gone)
            else:
                gen = models.get("rebuilding activation memory")
                grown = actions[0].extra.get("grown")
                try:
                    activation.build(store, gen, cube, selection, units=grown or actions[0].extra["hot"])
                except UsageError:  # the grown block is too long for the context: rebuild it
                    if not grown:
                        raise
                    activation.build(store, gen, cube, selection, units=actions[0].extra["hot"])
        except MemosError as exc:
            for a in actions:
                a.status, a.note = "skipped", str(exc)
            report.skipped.append(f"heat in cube {cube}: activation memory not rebuilt: {exc}")
            continue
        for a in actions:
            a.status = "done"


def _compact(store: MemoryStore, report: Report) -> None:
    from . import activation

    with store.locked():
        report.maintenance += activation.repair_locked(store)
    # Compaction rewrites the whole table (2 s at 100k units): worth it after a big run, whose new
    # versions leave as many deleted rows behind, not after a routine one, whose few new rows the
    # table's own tiered merging (store.upkeep, which the run's slices skipped) keeps in few fragments.
    changed = len({i for a in report.actions if a.status == "done" and a.action not in HEAT_ACTIONS
                   for i in a.units})
    fragments = store.table.fragments()
    if changed >= min(COMPACT_CHANGED, max(1, int(COMPACT_SHARE * store.table.count()))) \
            or fragments >= COMPACT_FRAGMENTS:
        sizes = store.compact(prune=False)  # git repacks after the lock: writers need not wait for it
        report.maintenance.append(f"compacted: {fragments} table fragments -> {store.table.fragments()}, "
                                  f"tables {_mb(sizes['tables_bytes_before'])} -> {_mb(sizes['tables_bytes_after'])}, "
                                  f".git {_mb(sizes['git_bytes_before'])} -> {_mb(sizes['git_bytes_after'])}")
    elif report.commits:
        store.upkeep(from_run=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def log_line(report: Report, store_root: str) -> str:
    """The line ``--log FILE`` appends for a run."""
    commit = report.commit[:10] if report.commit else "-"
    extra = f" skipped: {'; '.join(report.skipped)}" if report.skipped else ""
    return (f"{iso(report.started)} store={store_root} cubes={','.join(report.cubes) or '-'} "
            f"commit={commit} seconds={report.seconds:.2f} mode={report.mode} {report.summary()}{extra}\n")

