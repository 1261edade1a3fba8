"""The search table's upkeep after writes (fragment merges, index folds) and compaction."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import LockedError, MemosError
from memos_cli.store import layout

if TYPE_CHECKING:
    from memos_cli.plaintext.table import UnitTable


class TableUpkeep:
    """``MemoryStore``'s table upkeep (a mixin: ``self`` is the store)."""

    def upkeep(self, *, from_run: bool = False, fold: bool = True) -> None:
        """After a write, outside the store's lock: keep the table quick to search and to write to.

        Merges fragments (``UnitTable.merge_plan``) and folds new rows into the full-text and vector
        indexes. Under the lock, each cost a write 50 ms (a merge at 10k units) to several seconds (a
        fold at 100k), and every other writer waited. Now the merged files are written with no lock
        and committed under it (10 ms), and an index is committed by Lance alone, which keeps it
        consistent with the writes committed meanwhile. One upkeep at a time per store
        (``UnitTable.exclusive``; a writer that finds one at work leaves it); it changes no row, so
        it needs no journal, and a kill leaves at worst files no version names, which
        ``memos compact`` removes. Best effort: the write is done whatever happens here. Left while a
        consolidate run is under way, unless the run itself asks (``from_run``); ``fold``: the indexes
        too (a run's slices merge fragments only, and leave the indexes to the run's end).
        """
        table = self.table
        if not table.exists() or (not from_run and self._run_going()):
            return
        with table.exclusive(None) as held:
            if held:
                self._upkeep(table, fold)

    @property
    def run_lock_path(self) -> Path:
        """Held by a ``memos consolidate`` run (``scheduler.run_lock``)."""
        return self.state_dir / layout.RUN_LOCK

    def _run_going(self) -> bool:
        """Whether a consolidate run is under way: its slices change many rows, and its end compacts the
        table, so a writer's upkeep meanwhile would only take its CPU (and fold rows twice)."""
        try:
            fd = os.open(self.run_lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # and the probe's lock with it
        return False

    def _upkeep(self, table: UnitTable, fold: bool) -> None:
        from memos_cli.plaintext.table import UPKEEP_LOCK_WAIT

        def commit(results: list[Any]) -> bool:
            if not table.commit_rewrite(results):
                return False
            table.cleanup()  # one table version on disk, as after any write
            return True

        try:
            for _ in range(8):  # a merge can fill the next level; 16^8 rows is far away
                plan = table.merge_plan()
                if plan is None:
                    break
                results = table.rewrite(plan)
                if not self._with_lock(UPKEEP_LOCK_WAIT, lambda r=results: commit(r)):
                    table.discard(results)  # a no-op when commit_rewrite removed them already
                    break
            if fold and table.fold_indexes():
                self._with_lock(UPKEEP_LOCK_WAIT, table.cleanup)
        except (OSError, ValueError, RuntimeError, MemosError) as exc:  # Lance's, a recovery's: the next write retries
            if "not found" not in str(exc).lower():  # not a file a writer's cleanup took meanwhile
                self.notices.append(f"the search table's upkeep was left for the next write ({layout.one_line(exc)})")

    def _with_lock(self, timeout: float, step: Callable[[], Any]) -> Any:
        """``step()`` under the store's lock, waiting at most ``timeout``; False when it was busy."""
        lock = self._lock_for(timeout)
        try:
            lock.acquire()
        except LockedError:
            return False
        try:
            self._recover_locked()
            return step()
        finally:
            lock.release()

    def compact(self, *, prune: bool = True) -> dict[str, int]:
        """Merge table fragments, refresh the indexes, repack git.

        Makes a commit only when pending access counts were folded in: the
        table is not in git, so compacting it changes no history. The merged
        files are written before the lock is taken and committed under it,
        and the indexes are refreshed after it, as in ``upkeep`` (whose lock
        this holds throughout). With ``prune`` (``memos compact``) unreachable
        git objects are deleted now, under the lock; without it (the
        scheduler) git repacks after the lock is released and keeps recent
        loose objects, as ``git gc`` does, which is safe beside other writers'
        commits and keeps them from waiting.
        """
        before = self.sizes()
        table = self.table
        with table.exclusive(self._lock_for().timeout):
            fragments = table.fragments()
            plan = table.compaction_plan()
            results = table.rewrite(plan) if plan is not None else []
            with self.transaction("compact", cube="*") as txn:
                txn.skip_upkeep = True  # done here, with the upkeep lock held
                table.commit_rewrite(results)  # not when a write changed those rows since: left to the next
                txn.summary = f"{table.count()} units, {fragments} table fragments -> {table.fragments()}"
                if prune:
                    txn.after_commit.append(self.repo.gc)
            table.fold_indexes(force=True)
            # Files no version names (a write or upkeep cut off) go too: they may hold text.
            self._with_lock(self._lock_for().timeout, lambda: table.cleanup(unverified=True))
        if not prune:
            self.repo.gc(prune=False)
        after = self.sizes()
        return {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}
