"""The store: one commit per write, all-or-nothing, locking, crash recovery, recall."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from memos_cli.errors import LockedError, StoreError, UsageError
from memos_cli.plaintext.retrieval import Filters
from memos_cli.plaintext.units import parse_time
from memos_cli.store.store import MemoryStore

from .conftest import commit_count, git, head


def test_init_makes_a_git_repo_with_config(tmp_path, embedder):
    s = MemoryStore(tmp_path / "new", embedder=embedder)
    assert s.init() is True
    assert (s.root / ".git").is_dir() and (s.root / "memos.toml").is_file()
    assert commit_count(s.root) == 1
    assert s.init() is False  # idempotent
    assert commit_count(s.root) == 1


def test_each_write_is_one_commit_and_reads_make_none(store):
    n = commit_count(store.root)
    unit = store.add("Alice moved to Lisbon", kind="fact", tags=["alice"], cube="people", user="bob")
    assert commit_count(store.root) == n + 1
    message = git(store.root, "log", "-1", "--format=%B")
    assert message.startswith("add: 1 unit (cube people, user bob)")
    assert unit.id in message and "Memos-Op: add" in message
    assert git(store.root, "log", "-1", "--format=%an").strip() == "bob"
    store.recall("Lisbon")
    store.list()
    store.get(unit.id)
    store.stats()
    assert commit_count(store.root) == n + 1
    assert git(store.root, "status", "--porcelain") == ""


def test_import_is_one_commit_and_all_or_nothing(store):
    records = [(i + 1, {"text": f"note {i}", "tags": ["batch"]}) for i in range(50)]
    before = head(store.root)
    with pytest.raises(UsageError, match="line 51"):
        store.import_records(records + [(51, {"text": ""})])
    assert head(store.root) == before and store.list() == []
    units = store.import_records(records)
    assert len(units) == 50 and commit_count(store.root) == 2
    assert git(store.root, "log", "-1", "--format=%s").startswith("import: 50 units")
    assert len(store.list(limit=0)) == 50


def test_unit_fields_round_trip(store):
    unit = store.add("Bob's flight lands at 9", kind="episode", tags=["travel"], meta={"flight": "TP123", "n": 2},
                     time="2024-05-08T09:00:00Z", ttl="30d", importance=0.9, sources=[{"dia_id": "D1:3"}])
    got = store.get(unit.id)
    assert got.text == unit.text and got.kind == "episode" and got.tags == ["travel"]
    assert got.meta == {"flight": "TP123", "n": 2} and got.sources == [{"dia_id": "D1:3"}]
    assert got.time == parse_time("2024-05-08T09:00:00Z") and got.expires_at is not None
    assert got.importance == pytest.approx(0.9) and got.status == "active" and got.version == 1
    assert got.model == store.embedder.model_id and len(got.vector) == store.embedder.dim


def test_the_table_is_one_lancedb_opens_and_searches(store):
    """memos writes the table with Lance alone; LanceDB (a test dependency only) opens it as its own
    table, its full-text index included, after adds, an edit and a forget."""
    import lancedb

    kept = store.add("The passport is in the blue folder on the top shelf.")
    gone = store.add("The old bike lock code was 1234.")
    store.edit(kept.id, {"tags": ["documents"]})
    store.forget([gone.id])
    table = lancedb.connect(str(store.table.dir)).open_table("units")
    assert table.count_rows() == 2
    assert "terms_idx" in {i.name for i in table.list_indices()}
    hits = table.search("passport folder", query_type="fts").limit(5).to_list()
    assert [h["id"] for h in hits] == [kept.id] and hits[0]["tags"] == ["documents"]


def test_get_by_prefix_and_unknown_id(store):
    unit = store.add("something")
    assert store.get(unit.id[:12]).id == unit.id
    with pytest.raises(Exception, match="no memory with id"):
        store.get("zzzzzzzzzzzzzz")


def test_recall_ranks_the_relevant_memory_first(store):
    store.import_records(list(enumerate([
        {"text": "Alice prefers green tea to coffee", "kind": "preference"},
        {"text": "The quarterly report is due on Friday", "kind": "note", "tags": ["work"]},
        {"text": "Bob adopted a dog named Pixel", "kind": "fact"},
        {"text": "The office wifi password changed last week", "kind": "note", "tags": ["work"]},
    ], 1)))
    assert store.recall("what does Alice drink?", 1)[0].unit.text.startswith("Alice prefers")
    assert store.recall("Bob's pet", 1)[0].unit.text.startswith("Bob adopted")
    hits = store.recall("report deadline", 4, Filters(tags=["work"]))
    assert [h.unit.text for h in hits][0].startswith("The quarterly")
    assert all("work" in h.unit.tags for h in hits)
    assert all(h.signals for h in hits)


def test_recall_filters(store):
    store.add("tea in 2022", time="2022-06-01", kind="fact", cube="a", user="u1")
    store.add("tea in 2024", time="2024-06-01", kind="note", cube="b", user="u2")
    store.add("tea that expired", ttl="1s")
    time.sleep(1.2)

    def texts(**kw):
        return sorted(h.unit.text for h in store.recall("tea", 10, Filters(**kw)))

    assert texts() == ["tea in 2022", "tea in 2024"]  # the expired one is gone
    assert texts(kind="fact") == ["tea in 2022"]
    assert texts(cube="b") == ["tea in 2024"]
    assert texts(user="u1") == ["tea in 2022"]
    assert texts(since=parse_time("2023-01-01")) == ["tea in 2024"]
    assert texts(until=parse_time("2023-01-01")) == ["tea in 2022"]


def test_access_counts_reach_history_with_the_next_write(store):
    unit = store.add("Carol plays the cello")
    n = commit_count(store.root)
    store.recall("cello", 1)
    store.recall("who plays cello", 1)
    assert commit_count(store.root) == n
    assert store.get(unit.id).access_count == 2  # pending counts are shown
    store.add("another memory")
    assert "access counts folded in for 1 units" in git(store.root, "log", "-1", "--format=%B")
    assert store.pending_access() == {}
    assert store.get(unit.id).access_count == 2 and store.get(unit.id).last_accessed is not None


def test_newer_schema_is_refused(store):
    path = store.root / "memos.toml"
    path.write_text(path.read_text().replace("schema_version = 3", "schema_version = 99"))
    with pytest.raises(StoreError, match="newer memos"):
        MemoryStore(store.root).config  # noqa: B018


def test_store_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        MemoryStore(tmp_path / "f")
    with pytest.raises(StoreError, match="is a file"):
        MemoryStore(tmp_path / "f" / "sub").init()


def test_non_store_directory_is_not_taken_over(tmp_path, embedder):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a memos store"):
        MemoryStore(tmp_path / "docs", embedder=embedder).add("x")
    assert os.listdir(tmp_path / "docs") == ["thesis.txt"]


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from memos_cli.lock import StoreLock
    lock = StoreLock(Path(sys.argv[1]) / ".git" / "memos" / "lock")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_second_writer_waits_then_fails_naming_the_holder(store, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.root), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("MEMOS_LOCK_TIMEOUT", "0.5")
        before = head(store.root)
        started = time.monotonic()
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            store.add("blocked write")
        assert 0.4 < time.monotonic() - started < 5
        assert head(store.root) == before
    finally:
        holder.kill()
        holder.wait()
    store.add("after the holder died")  # the kernel dropped its lock


def test_second_writer_gets_in_once_the_first_is_done(store, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.root), "1"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setenv("MEMOS_LOCK_TIMEOUT", "20")
    store.add("waited for the lock")
    holder.wait()
    assert store.list()[0].text == "waited for the lock"


CRASH_MID_WRITE = textwrap.dedent("""
    import os, sys
    from memos_cli.store.store import MemoryStore
    from memos_cli.plaintext.units import build_unit
    from memos_cli.models.embedder import Embedder
    from memos_cli.models.registry import default_embedding_model_path
    s = MemoryStore(sys.argv[1], embedder=Embedder(default_embedding_model_path()))
    units = [build_unit(f"half-written {i}") for i in range(20)]
    s.embed(units)
    with s.transaction("import") as txn:
        s.save(txn, units, new=True)
        os._exit(9)  # killed between the writes and the commit
""")


def test_a_crash_mid_write_is_rolled_back_by_the_next_command(store):
    kept = store.add("written before the crash")
    before = head(store.root)
    done = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(store.root)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert git(store.root, "status", "--porcelain") != ""  # half-written files are there
    fresh = MemoryStore(store.root, embedder=store.embedder)
    assert fresh.recover() is True
    assert "recovered from an interrupted import" in fresh.notices[0]
    assert head(store.root) == before
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert [u.id for u in fresh.list(limit=0)] == [kept.id]
    fresh.add("life goes on")
    assert len(fresh.list(limit=0)) == 2


def test_a_failed_write_leaves_the_store_as_it_was(store):
    first = store.add("first")
    before = head(store.root)
    with pytest.raises(RuntimeError):
        with store.transaction("add") as txn:
            store.table.add([store.get(first.id)])
            txn.ids = ["x"]
            raise RuntimeError("boom")
    assert head(store.root) == before
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert len(store.list()) == 1


@pytest.mark.slow
def test_many_single_adds_keep_fragments_few_and_one_version_on_disk(store):
    from memos_cli.plaintext.table import FANOUT

    for i in range(3 * FANOUT + 5):
        store.add(f"single add number {i}")
    rows = sorted(f.metadata.physical_rows for f in store.table.ds.get_fragments())
    # Each level holds fewer than FANOUT fragments: here 3 merged ones of 16 and 5 singles.
    assert rows == [1] * 5 + [FANOUT] * 3
    assert len(store.list(limit=0)) == 3 * FANOUT + 5
    lance_dir = store.root / "tables" / "units.lance"
    assert len([f for f in os.listdir(lance_dir / "_versions") if f.endswith(".manifest")]) == 1
    assert len(os.listdir(lance_dir / "data")) == len(rows)
    assert git(store.root, "status", "--porcelain") == ""


def test_vector_index_is_built_and_kept_current(store, monkeypatch):
    from memos_cli.plaintext import table as table_mod

    monkeypatch.setattr(table_mod, "VECTOR_INDEX_MIN_ROWS", 300)
    store.import_records([(i + 1, {"text": f"filler memory number {i} about nothing much"}) for i in range(299)])
    assert not [i for i in store.table.ds.describe_indices() if i.name == table_mod.VECTOR_INDEX]
    store.import_records([(1, {"text": "Zelda keeps bees on the roof of her flat"})])
    indexed = {i.name: i.num_rows_indexed for i in store.table.ds.describe_indices()}
    assert indexed[table_mod.VECTOR_INDEX] == 300
    store.add("Yannick repairs old typewriters")  # not in the index yet: found by the flat scan of new rows
    assert store.recall("who fixes typewriters?", 1)[0].unit.text.startswith("Yannick")
    assert store.recall("beekeeping on a rooftop", 1)[0].unit.text.startswith("Zelda")


def test_access_counts_are_not_counted_twice_when_a_step_after_the_commit_fails(store):
    unit = store.add("Dora sails a small boat on weekends")
    store.recall("sailing", 1)

    def failing_gc() -> None:
        raise RuntimeError("gc failed")

    with pytest.raises(RuntimeError, match="gc failed"):
        with store.transaction("compact") as txn:
            txn.after_commit.append(failing_gc)
    assert "access counts folded in for 1 units" in git(store.root, "log", "-1", "--format=%B")
    assert store.pending_access() == {}
    assert store.get(unit.id).access_count == 1


WRITE_LOOP = textwrap.dedent("""
    import sys
    from memos_cli.store.store import MemoryStore
    store = MemoryStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.add(f"writer memory {i} about boats and gardens")
""")


@pytest.mark.slow
def test_a_reader_keeps_working_while_another_process_writes_and_compacts(store):
    store.import_records([(i, {"text": f"seed memory {i} about gardens"}) for i in range(50)])
    writer = subprocess.Popen([sys.executable, "-c", WRITE_LOOP, str(store.root), "40"])
    recalls = 0
    while writer.poll() is None:  # every 16 adds merge fragments and delete the old files
        assert len(store.recall("gardens and boats", 5)) == 5
        recalls += 1
    assert writer.returncode == 0 and recalls > 5
    # The long-lived reader sees what the other process wrote.
    assert store.table.count() == 90
    assert store.recall("writer memory 39 boats", 1)[0].unit.text == "writer memory 39 about boats and gardens"


RACE_INIT = textwrap.dedent("""
    import sys
    from memos_cli.store.store import MemoryStore
    print(MemoryStore(sys.argv[1]).init())
""")


def test_racing_first_writers_make_one_store(tmp_path):
    root = tmp_path / "new" / "store"
    procs = [subprocess.Popen([sys.executable, "-c", RACE_INIT, str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["False", "False", "False", "True"]
    assert commit_count(root) == 1 and (root / "memos.toml").is_file()
