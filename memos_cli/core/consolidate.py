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
   memory; its KV cache is rebuilt when that set changed.
6. **compaction**: after a run that changed something, or when the table has
   many fragments: LanceDB compaction and index refresh, git repack; orphaned
   cache files are removed.

Nothing is ever deleted (expiry with ``action = "delete"`` forgets, which is a
status too), so rollback and ``show --history`` keep working.

Concurrency: the plan is made from a snapshot without the store's lock (the
slow part: reading vectors, comparing, asking the model), then applied in one
transaction, one commit for the whole run. Under the lock every unit an
action touches is read again, and an action whose units changed meanwhile is
skipped (the next run looks again); units added meanwhile are simply not in
this run. So ``memos add`` from other processes waits at most for the short
apply, never for the planning. Two runs never overlap: a second one waits for
the first (``consolidate.lock``), up to the lock timeout, then says who holds it.
A second run right after the first finds nothing to do and makes no commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LockedError, MemosError, NotFoundError
from .lock import StoreLock
from .units import MemoryUnit, build_unit, iso, parse_time, utcnow

if TYPE_CHECKING:
    from ..models.generator import Generator
    from .policy import ConsolidatePolicy
    from .store import MemoryStore

COMPACT_FRAGMENTS = 8  # a run that changed nothing still compacts a table with this many fragments
DEDUPE_PASSES = 5  # at most, above dedupe.EXACT_MAX units (see Planner.duplicates)
JUDGE_PAIRS = 200  # candidate pairs the LLM judge is asked about per cube and run
SUMMARY_TOKENS = 160
SUMMARY_PROMPT_ROOM = 256  # tokens of the context kept free for the summary
ACTIONS = ("expire", "merge", "supersede", "summarise", "promote", "demote", "refresh")
HEAT_ACTIONS = ("promote", "demote", "refresh")  # activation memory: derived data, no commit


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
    commit: str | None = None
    skipped: list[str] = field(default_factory=list)  # steps that could not run, with why
    maintenance: list[str] = field(default_factory=list)  # compaction, cache files removed
    started: datetime = field(default_factory=utcnow)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, over all cubes

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
            "actions": [a.to_json() for a in self.actions],
            "skipped": self.skipped,
            "maintenance": self.maintenance,
            "started": iso(self.started),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


class StepSkipped(MemosError):
    """A step that cannot run this time (its model is missing); the others go on."""


# ---- the snapshot a plan is made from ------------------------------------------------


@dataclass
class Snapshot:
    """The active units of one cube, with their vectors (one row each, normalised)."""

    cube: str
    units: list[MemoryUnit]
    vectors: np.ndarray

    def rows(self, keep: Callable[[MemoryUnit], bool]) -> tuple[list[MemoryUnit], np.ndarray]:
        index = [i for i, u in enumerate(self.units) if keep(u)]
        return [self.units[i] for i in index], self.vectors[index] if index else self.vectors[:0]


def cubes(store: MemoryStore) -> list[str]:
    """The cubes that have units, in order."""
    if not store.table.exists():
        return []
    return sorted(set(store.table.select(None, columns=["cube"]).column("cube").to_pylist()))


def snapshot(store: MemoryStore, cube: str) -> Snapshot:
    from .table import from_row, sql_str

    table = store.table.select(f"status = 'active' AND cube = {sql_str(cube)}")
    if table.num_rows == 0:
        return Snapshot(cube, [], np.zeros((0, store.table.dim or 1), dtype=np.float32))
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
    return Snapshot(cube, units, vectors)


# ---- the chat model, loaded once, only if a step needs it ---------------------------------


class ModelSlot:
    """The chat model of ``[chat]``, loaded on first use; a load that fails is remembered."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._gen: Generator | None = None
        self._error: str | None = None

    def get(self, why: str) -> Generator:
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

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def complete(gen: Generator, prompt: str, max_tokens: int, stop: list[str]) -> str:
    """The model's greedy continuation of a plain prompt."""
    tokens = gen.tokenize(prompt, head=True)
    gen.prefill([])  # a fresh context: nothing of a previous prompt is reused by mistake
    return "".join(gen.stream(tokens, temperature=0.0, max_tokens=max_tokens, stop=stop)).strip()


# ---- planning -----------------------------------------------------------------------


class Planner:
    """Works out the actions for one cube from its snapshot (no writes)."""

    def __init__(self, store: MemoryStore, policy: ConsolidatePolicy, models: ModelSlot, report: Report,
                 now: datetime) -> None:
        self.store, self.policy, self.models, self.report, self.now = store, policy, models, report, now

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
            units, vectors = snap.rows(lambda u: u.id not in gone)
            groups = find_duplicates([u.id for u in units], [u.text for u in units], vectors,
                                     similarity=policy.similarity, text_similarity=policy.text_similarity)
            for g in groups:
                merged.setdefault(g.survivor, {}).update(g.reasons)
                gone.update(g.duplicates)
            if not groups or len(units) <= EXACT_MAX:
                break
        return [Action("merge", snap.cube, [survivor, *dups],
                       "; ".join(f"{d[:10]}: {reason}" for d, reason in dups.items()))
                for survivor, dups in sorted(merged.items())]

    def superseded(self, snap: Snapshot, used: set[str]) -> list[Action]:
        policy = self.policy.superseded
        if not policy.enabled:
            return []
        from . import supersede

        units, vectors = snap.rows(lambda u: u.id not in used and u.kind in policy.kinds and u.valid_to is None)
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
        gen = self.models.get("the LLM judge of superseded facts")
        by_id = {u.id: u for u in units}
        closed: dict[str, Any] = {}  # older id -> its earliest replacement
        for older, newer, cos in pairs:
            if older in closed:
                continue
            answer = complete(gen, supersede.judge_prompt(by_id[older].text, by_id[newer].text), 3, ["\n"])
            if supersede.parse_verdict(answer):
                closed[older] = supersede.Supersession(older, newer, supersede.effective_time(by_id[newer]),
                                                       f"the chat model judged it an update (cosine {cos:.2f})")
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


def projected_hot_set(snap: Snapshot, policy: ConsolidatePolicy, now: datetime, gone: set[str]) -> list[MemoryUnit]:
    """For a dry run: the heat block after the plan, from the snapshot (``gone``: the units the plan
    archives or closes). A real run reads the store again once the plan is applied."""
    from .activation import heat_selection

    units = [u for u in snap.units if u.id not in gone and (u.expires_at is None or u.expires_at > now)]
    return heat_selection(units, policy.heat, now)


def plan_heat(store: MemoryStore, cube: str, hot: list[MemoryUnit], top: int, identity: Any) -> list[Action]:
    """Promote and demote: how the cube's heat block (``hot``: what it should hold) differs from the
    one built for this model; a block of the same units that went stale is refreshed."""
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
    if entering:
        actions.append(Action("promote", cube, entering,
                              f"into activation memory (pinned, and the top {top} by heat)", extra=extra))
    if leaving:
        actions.append(Action("demote", cube, leaving, "out of activation memory: cooler, cold, closed or gone",
                              extra=extra))
    if record is not None and not actions and now_ids:
        activation.assess(store, record, identity)
        if record.status != "current":
            actions.append(Action("refresh", cube, now_ids,
                                  f"activation memory rebuilt: it was {record.status} ({record.reason})", extra=extra))
    return actions


# ---- the run --------------------------------------------------------------------------------


@contextmanager
def run_lock(store: MemoryStore) -> Iterator[None]:
    """One consolidate at a time per store: waits up to the lock timeout, then says who runs."""
    lock = StoreLock(store.state_dir / "consolidate.lock", store._lock_for().timeout)
    try:
        lock.acquire()
    except LockedError:
        raise LockedError(f"another memos consolidate is running ({lock.holder().removeprefix('pid ')}); "
                          f"gave up waiting after {lock.timeout:g}s") from None
    try:
        yield
    finally:
        lock.release()


def consolidate(store: MemoryStore, *, cube: str | None = None, dry_run: bool = False,
                progress: Callable[[str], None] | None = None) -> Report:
    """Plan and (unless ``dry_run``) apply one run of the scheduler; see the module's docstring."""
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
            snaps = {}
            for name in chosen:
                say(f"planning cube {name}")
                since = time.perf_counter()
                snaps[name] = snap = snapshot(store, name)
                report.timed("read", since)
                report.actions += planner.plan(snap)
            since = time.perf_counter()
            identity = _identity(store, policy, report)
            top = policy.heat.activation_top
            if dry_run:
                for name in chosen:
                    if identity is not None:
                        gone = {u for a in report.actions if a.cube == name for u in _leaving(a)}
                        report.actions += plan_heat(store, name, projected_hot_set(snaps[name], policy, now, gone),
                                                    top, identity)
                report.timed("heat", since)
                return report
            say("applying")
            since = time.perf_counter()
            _apply(store, report, snaps)
            report.timed("apply", since)
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
    finally:
        models.close()
        report.seconds = time.perf_counter() - started
    return report


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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
    """The unit changes of the plan, in one transaction: one commit, or none when nothing is left to do."""
    edits = [a for a in report.actions if a.action not in HEAT_ACTIONS]
    if not edits:
        return
    summaries = [a for a in edits if a.action == "summarise"]
    new_units: dict[int, MemoryUnit] = {}
    for a in summaries:  # built and embedded before the lock
        turns = {u.id: u for u in snaps[a.cube].units}
        parts = [turns[i] for i in a.units]
        meta: dict[str, Any] = {"summarises": len(parts)}
        if parts[0].meta.get("session"):
            meta["session"] = parts[0].meta["session"]
        new_units[id(a)] = build_unit(
            a.extra["text"], kind="summary", cube=a.cube, user=parts[0].user or None,
            tags=sorted({t for u in parts for t in u.tags}), time=parts[0].time or parts[0].created_at,
            meta=meta, sources=[{"unit": u.id} for u in parts])
    if new_units:
        store.embed(list(new_units.values()))
    planned = {u.id: u.version for snap in snaps.values() for u in snap.units}
    import lancedb  # noqa: F401 - the table's writes need it: imported (1-3 s) before the lock, not under it
    cube_names = ",".join(sorted({a.cube for a in edits}))
    with store.transaction("consolidate", cube=cube_names) as txn:
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
        txn.summary = Report(cubes=[], dry_run=False, actions=done).summary()
        txn.details += [f"{a.action} {' '.join(a.units)}: {a.reason}" for a in done]
    report.commit = txn.commit


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
                activation.build(store, models.get("rebuilding activation memory"), cube, selection,
                                 units=actions[0].extra["hot"])
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
    changed = any(a.status == "done" and a.action not in HEAT_ACTIONS for a in report.actions)
    fragments = store.table.fragments()
    if changed or fragments >= COMPACT_FRAGMENTS:
        sizes = store.compact()
        report.maintenance.append(f"compacted: {fragments} table fragments -> {store.table.fragments()}, "
                                  f"tables {_mb(sizes['tables_bytes_before'])} -> {_mb(sizes['tables_bytes_after'])}, "
                                  f".git {_mb(sizes['git_bytes_before'])} -> {_mb(sizes['git_bytes_after'])}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def log_line(report: Report, store_root: str) -> str:
    """The line ``--log FILE`` appends for a run."""
    commit = report.commit[:10] if report.commit else "-"
    extra = f" skipped: {'; '.join(report.skipped)}" if report.skipped else ""
    return (f"{iso(report.started)} store={store_root} cubes={','.join(report.cubes) or '-'} "
            f"commit={commit} seconds={report.seconds:.2f} {report.summary()}{extra}\n")

