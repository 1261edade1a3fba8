"""The table's upkeep after a write (``MemoryStore.upkeep``): fragment merges and index folds, done
outside the store's lock, and what happens when writes or cleanups meet them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from memos_cli.errors import LockedError
from memos_cli.plaintext import table as table_mod
from memos_cli.plaintext.table import FANOUT, FTS_INDEX
from memos_cli.store.store import MemoryStore


def _store_lock_free(store: MemoryStore) -> bool:
    """Whether the store's lock is free (flock: taken by this process on another file, it is not)."""
    lock = store._lock_for(0)
    if lock.acquire(blocking=False):
        lock.release()
        return True
    return False


def _rows(store: MemoryStore) -> list[int]:
    return sorted(f.metadata.physical_rows for f in store.table.ds.get_fragments())


def _without_upkeep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MemoryStore, "upkeep", lambda self: None)


def test_merges_and_folds_are_written_outside_the_store_lock(store, monkeypatch) -> None:
    seen: list[tuple[str, bool]] = []
    rewrite, fold = table_mod.UnitTable.rewrite, table_mod.UnitTable.fold_indexes

    def watched_rewrite(self, plan):
        seen.append(("rewrite", _store_lock_free(store)))
        return rewrite(self, plan)

    def watched_fold(self, force=False):
        seen.append(("fold", _store_lock_free(store)))
        return fold(self, force)

    monkeypatch.setattr(table_mod.UnitTable, "rewrite", watched_rewrite)
    monkeypatch.setattr(table_mod.UnitTable, "fold_indexes", watched_fold)
    for i in range(FANOUT + 1):
        store.add(f"upkeep note number {i}")
    # The first add's fragment is in the full-text index; the next 16 were merged into one.
    assert _rows(store) == [1, FANOUT]
    assert ("rewrite", True) in seen and ("fold", True) in seen
    assert all(free for _, free in seen), seen


def test_a_merge_whose_rows_a_write_changed_meanwhile_is_refused_and_leaves_no_file(store, monkeypatch) -> None:
    _without_upkeep(monkeypatch)
    units = [store.add(f"fragment row {i}") for i in range(FANOUT + 1)]
    table = store.table
    results = table.rewrite(table.merge_plan())
    new_files = table._new_files(results)
    assert new_files and all(p.is_file() for p in new_files)
    store.edit(units[5].id, {"text": "fragment row five, edited while the merge was written"})
    assert not table.commit_rewrite(results)  # Lance: the edit touched a fragment the merge rewrote
    assert not any(p.exists() for p in new_files)
    assert store.get(units[5].id).text.endswith("edited while the merge was written")
    assert len(store.list(limit=0)) == FANOUT + 1

    again = table.rewrite(table.merge_plan())  # nothing changed since this one: it lands
    assert table.commit_rewrite(again)
    assert len(_rows(store)) < FANOUT and len(store.list(limit=0)) == FANOUT + 1
    assert store.get(units[5].id).text.endswith("edited while the merge was written")


def test_a_merge_whose_files_a_cleanup_took_is_refused(store, monkeypatch) -> None:
    _without_upkeep(monkeypatch)
    for i in range(FANOUT + 1):
        store.add(f"cleanup row {i}")
    table = store.table
    results = table.rewrite(table.merge_plan())
    with table.exclusive():
        table.cleanup(unverified=True)  # the merged files are named by no version yet: removed
    assert not table.commit_rewrite(results)
    assert len(_rows(store)) == FANOUT + 1 and len(store.list(limit=0)) == FANOUT + 1


def test_an_index_folded_from_an_older_version_agrees_with_the_writes_made_meanwhile(store) -> None:
    import lance

    store.add("The first add makes the table and its index.")
    kayak, violin, _ = store.import_records([(1, {"text": "The red kayak hangs in the garage."}),
                                              (2, {"text": "The violin lessons are on Tuesday afternoons."}),
                                              (3, {"text": "The hall light needs a new bulb."})])
    lonely = store.add("A unit alone in its fragment.")
    older = lance.dataset(str(store.table.path))
    store.edit(lonely.id, {"text": "Edited: its old fragment is gone, and its file with it."})
    with pytest.raises(OSError, match="Not found"):  # a fold that lost a race with a cleanup: upkeep leaves it
        older.optimize.optimize_indices(index_names=[FTS_INDEX])

    older = lance.dataset(str(store.table.path))  # a fold starts from this version...
    store.edit(violin.id, {"text": "The cello lessons are on Thursday afternoons."})  # a row of 3 in its fragment
    bike = store.add("The bike needs a new chain.")
    # ... and commits after those writes (Lance rebases it onto them).
    older.optimize.optimize_indices(index_names=[FTS_INDEX])
    stats = store.table.ds.stats.index_stats(FTS_INDEX)
    assert stats["num_indexed_rows"] >= 2

    def found(word: str) -> set[str]:
        return set(store.table.ds.to_table(full_text_query=word, columns=["id"])["id"].to_pylist())

    assert found("violin") == set()  # the old text is indexed, but its row was replaced
    assert found("cello") == {violin.id} and found("kayak") == {kayak.id} and found("chain") == {bike.id}
    assert [h.unit.id for h in store.recall("cello lessons", k=1, context=False)] == [violin.id]


def test_an_upkeep_at_work_in_another_process_is_left_to_it_and_a_drop_waits_for_it(store) -> None:
    path = store.table.dir / table_mod.UPKEEP_LOCK
    store.add("the first unit makes the table")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for i in range(FANOUT):
            store.add(f"added while another upkeep runs {i}")
        assert len(_rows(store)) == FANOUT + 1  # this process left the merge to the other one
        with pytest.raises(LockedError):
            with store.table.exclusive(timeout=0.2):
                pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    store.add("the next write merges")
    assert _rows(store) == [1, FANOUT + 1]  # the 17 unindexed fragments merged into one
    with store.table.exclusive(timeout=0.2):
        with store.table.exclusive(timeout=0.2):  # held by this process already
            pass


def test_writers_leave_the_upkeep_to_a_consolidate_run_under_way(store) -> None:
    from memos_cli.lock import StoreLock

    store.add("the first unit makes the table")
    run = StoreLock(store.run_lock_path)
    run.acquire()  # as `memos consolidate` holds it for its whole run
    try:
        for i in range(FANOUT):
            store.add(f"added during a consolidate run {i}")
        assert len(_rows(store)) == FANOUT + 1  # no writer merged: the run's end does
        store.upkeep(from_run=True)
        assert _rows(store) == [1, FANOUT]
    finally:
        run.release()
