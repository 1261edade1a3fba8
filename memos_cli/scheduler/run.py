"""One run of the scheduler (``memos consolidate``): plan, apply, record; see the package's docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memos_cli.errors import LockedError, MemosError, NotFoundError
from memos_cli.lock import StoreLock
from memos_cli.plaintext.units import iso, utcnow
from memos_cli.scheduler.apply import apply_plan, compact_after, promote
from memos_cli.scheduler.model import ModelSlot
from memos_cli.scheduler.parametric import review
from memos_cli.scheduler.plan import Planner, plan_heat, projected_hot_set
from memos_cli.scheduler.report import HEAT_ACTIONS, Report, leaving
from memos_cli.scheduler.scope import (
    cubes,
    fingerprint,
    incremental_snapshot,
    load_state,
    plan_scopes,
    save_state,
    snapshot,
)

if TYPE_CHECKING:
    from memos_cli.store.policy import ConsolidatePolicy
    from memos_cli.store.store import MemoryStore


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
    """Plan and (unless ``dry_run``) apply one run of the scheduler; see the package's docstring.
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
                        gone = {u for a in report.actions if a.cube == name for u in leaving(a)}
                        report.actions += plan_heat(store, name, projected_hot_set(store, name, policy, now, gone),
                                                    top, identity)
                report.timed("heat", since)
                review(store, policy, report, chosen, models, _model_identity(store), dry_run=True)
                return report
            say("applying")
            since = time.perf_counter()
            if identity is not None and _heat_may_change(store, report, chosen, policy, now, identity):
                models.preload()  # loads while the plan is applied
            report.timed("heat", since)
            since = time.perf_counter()
            apply_plan(store, report, snaps)
            report.timed("apply", since)
            _record(store, report, planner, state, policy_key, seen, now)
            since = time.perf_counter()
            if identity is not None:
                from memos_cli.activation import Selection, select_units

                for name in chosen:  # from the memory as it is now, as `memos kv build --top` would
                    hot = select_units(store, name, Selection(top=top))
                    report.actions += plan_heat(store, name, hot, top, identity)
                promote(store, report, models)
            report.timed("heat", since)
            since = time.perf_counter()
            review(store, policy, report, chosen, models, identity or _model_identity(store), dry_run=False)
            report.timed("parametric", since)
            if policy.compaction.enabled:
                say("compacting")
                since = time.perf_counter()
                compact_after(store, report)
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
        gone = {u for a in report.actions if a.cube == name for u in leaving(a)}
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
    from memos_cli.chat.session import chat_settings
    from memos_cli.models.generator import identify

    spec, size = chat_settings(store, None, None)
    try:
        return identify(spec, size)
    except MemosError as exc:
        report.skipped.append(f"heat: the activation memories were not rebuilt: {exc}")
        return None


def _model_identity(store: MemoryStore) -> Any:
    """The chat model's identity (None when it cannot be found): which adapters are for it."""
    from memos_cli.chat.session import chat_settings
    from memos_cli.models.generator import identify

    spec, size = chat_settings(store, None, None)
    try:
        return identify(spec, size)
    except MemosError:
        return None


def log_line(report: Report, store_root: str) -> str:
    """The line ``--log FILE`` appends for a run."""
    commit = report.commit[:10] if report.commit else "-"
    extra = f" skipped: {'; '.join(report.skipped)}" if report.skipped else ""
    return (f"{iso(report.started)} store={store_root} cubes={','.join(report.cubes) or '-'} "
            f"commit={commit} seconds={report.seconds:.2f} mode={report.mode} {report.summary()}{extra}\n")
