"""Applying a plan: its unit changes in slices (each one transaction and one commit), the heat
blocks it changed, and the compaction after a big run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError, UsageError
from memos_cli.plaintext.units import MemoryUnit, build_unit, iso, utcnow
from memos_cli.privacy.guard import PrivacyError
from memos_cli.scheduler.model import ModelSlot
from memos_cli.scheduler.report import HEAT_ACTIONS, Action, Report
from memos_cli.scheduler.scope import (
    Snapshot,
)

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

COMPACT_FRAGMENTS = 32  # any run compacts a table with this many (store.upkeep keeps 15 a level)
COMPACT_CHANGED = 1000  # a run that changed at least this many units (or COMPACT_SHARE of them) compacts
COMPACT_SHARE = 0.05
# Applying a plan: slices of about SLICE_SECONDS of lock each, sized from the times the slices so far
# took (units per slice between SLICE_MIN and SLICE_MAX, SLICE_FIRST to start), SLICE_PAUSE apart.
SLICE_SECONDS = 0.8
SLICE_FIRST = 200
SLICE_MIN = 20
SLICE_MAX = 20_000
SLICE_PAUSE = 0.1


def apply_plan(store: MemoryStore, report: Report, snaps: dict[str, Snapshot]) -> None:
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
    # A summary is new text, written by the model: the privacy policy applies to it.
    guard = store.guard() if any(a.action == "summarise" for a in edits) else None
    for a in edits:  # summaries are built and embedded before the lock
        if a.action == "summarise":
            assert guard is not None
            try:
                a.extra["text"] = guard.text(a.extra["text"], "the summary")
            except PrivacyError as exc:
                a.status, a.note = "skipped", f"the summary holds {exc.kind} text the privacy policy refuses; not written"
                continue
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
        txn.skip_upkeep = True  # apply_plan merges fragments between slices; the run's end does the rest
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


def promote(store: MemoryStore, report: Report, models: ModelSlot) -> None:
    """Rebuild each cube's heat block whose set changed (derived data: no commit)."""
    from memos_cli import activation

    for cube in dict.fromkeys(a.cube for a in report.actions if a.action in HEAT_ACTIONS):
        actions = [a for a in report.actions if a.cube == cube and a.action in HEAT_ACTIONS]
        selection = actions[0].extra["selection"]
        try:
            if not actions[0].extra["hot"]:
                gone = [r.id for r in activation.records(store, cube) if r.selection == selection]
                activation.remove(store, gone)
            else:
                gen = models.get("rebuilding activation memory")
                grown = actions[0].extra.get("grown")  # the block's ids, then those appended
                try:
                    activation.build(store, gen, cube, selection,
                                     units=store.get_many(grown) if grown else actions[0].extra["hot"])
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


def compact_after(store: MemoryStore, report: Report) -> None:
    from memos_cli import activation

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
