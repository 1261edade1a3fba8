"""What an adversarial user found in the store's writes: hand edits overwritten, a failed undo that
lost its journal, slow work under the lock, concurrent writers that gave up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from memos_cli.errors import StoreError
from memos_cli.plaintext import files
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, git, head


def _hand_edit(root, uid: str, text: str) -> str:
    path = root / files.unit_path(uid)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["text"] = text
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return files.unit_path(uid)


def test_a_hand_edit_is_never_overwritten_by_a_later_write(store, cli) -> None:
    unit = store.add("Alice lives in Paris", kind="fact")
    rel = _hand_edit(store.root, unit.id, "Alice lives in Rome")
    assert cli("recall", "where does Alice live?").returncode == 0  # counts an access of the unit

    added = cli("add", "Bob plays the cello")
    assert added.returncode == 0, added.err
    assert "left 1 hand-edited unit file alone" in added.err
    assert json.loads((store.root / rel).read_text())["text"] == "Alice lives in Rome"  # the edit is still there
    assert "Alice lives in Paris" in git(store.root, "show", f"HEAD:{rel}")  # and was not committed over
    assert git(store.root, "status", "--porcelain", "--", rel).strip() == f"M {rel}"

    before = head(store.root)
    edited = cli("edit", unit.id, "--tag", "travel")  # a write of that very unit is refused, one line
    assert edited.returncode == 5
    assert_clean_failure(edited, match="has changes not committed")
    assert head(store.root) == before
    assert json.loads((store.root / rel).read_text())["text"] == "Alice lives in Rome"

    git(store.root, "commit", "-qam", "Rome, not Paris")  # the user commits it: memos takes it from there
    assert cli("add", "Carol paints").returncode == 0
    shown = json.loads(cli("show", unit.id, "--json").out)
    assert shown["text"] == "Alice lives in Rome" and shown["access_count"] == 1


def test_rollback_does_not_remove_a_hand_edited_file(store, cli) -> None:
    start = head(store.root)
    unit = store.add("Dora sails on weekends")
    _hand_edit(store.root, unit.id, "Dora sails every day")
    done = cli("rollback", start)
    assert done.returncode == 5
    assert_clean_failure(done, match="has changes not committed")
    assert (store.root / files.unit_path(unit.id)).exists()


def test_consolidate_leaves_a_hand_edited_unit_alone(store, cli) -> None:
    keep = store.add("Remember to water the plants on Sunday.")
    dup = store.add("remember to water the plants on sunday")
    _hand_edit(store.root, dup.id, "remember to water the plants on Sunday and Monday")
    done = cli("consolidate", "--json")
    assert done.returncode == 0, done.err
    merges = [a for a in json.loads(done.out)["actions"] if a["action"] == "merge"]
    assert merges and merges[0]["status"] == "skipped" and "not committed" in merges[0]["note"]
    assert "Sunday and Monday" in (store.root / files.unit_path(dup.id)).read_text()
    assert store.get(keep.id).status == "active" and store.get(dup.id).status == "active"


def test_a_failed_write_whose_undo_fails_keeps_its_journal_for_the_next_command(store, embedder, monkeypatch) -> None:
    store.add("first memory")
    before = head(store.root)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def broken_restore(version):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.repo, "commit", full_disk)
    monkeypatch.setattr(store.table, "restore", broken_restore)
    with pytest.raises(OSError, match="No space left") as info:  # the original error, first
        store.add("second memory, never committed")
    assert any("undoing the failed add failed too" in note for note in info.value.__notes__)
    assert store._journal.exists()  # kept: the next command undoes the write
    monkeypatch.undo()

    fresh = MemoryStore(store.root, embedder=embedder)
    assert fresh.recover() is True and "recovered from an interrupted add" in fresh.notices[0]
    assert head(store.root) == before
    assert [u.text for u in fresh.list(limit=0)] == ["first memory"]  # the table too
    from memos_cli.store.check import check

    assert not [p for p in check(fresh).problems if p.area != "privacy"]


def test_a_write_that_damaged_the_index_is_undone(store, embedder, monkeypatch) -> None:
    store.add("first memory")
    before = head(store.root)
    real = store.repo.commit

    def killed_git(*args, **kwargs):  # as if git died while writing the index
        (store.root / ".git" / "index").write_bytes(b"DIRC\x00\x00")
        raise StoreError("git update-index failed: killed")

    monkeypatch.setattr(store.repo, "commit", killed_git)
    with pytest.raises(StoreError, match="killed"):
        store.add("second memory, never committed")
    monkeypatch.setattr(store.repo, "commit", real)
    assert not store._journal.exists()  # the undo rebuilt the index and finished
    assert head(store.root) == before
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    from memos_cli.store.check import check

    assert not [p for p in check(MemoryStore(store.root, embedder=embedder)).problems if p.area != "privacy"]


LOCK_PROBE = textwrap.dedent("""
    import sys, time
    from memos_cli import lock
    from memos_cli.store.store import MemoryStore

    taken = []
    real = lock.StoreLock.acquire
    def acquire(self, blocking=True):
        done = real(self, blocking)
        taken.append(sys.modules.copy())
        return done
    lock.StoreLock.acquire = acquire
    store = MemoryStore(sys.argv[1])
    store.preload_embedder()
    store.add("a memory added from a fresh process")
    heavy = [m for m in ("lance", "git") if m not in taken[0]]
    print(" ".join(heavy) or "none", "lancedb" in sys.modules)
""")


def test_a_write_imports_its_libraries_before_it_takes_the_lock(store) -> None:
    """The slow imports (lance, gitpython) happen before the lock: a fresh process's add had them all
    loaded by the time it held the lock; and it never imports lancedb (1.1 s), as Lance does the writes."""
    store.add("first memory, so that the table exists")
    done = subprocess.run([sys.executable, "-c", LOCK_PROBE, str(store.root)], capture_output=True, text=True,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "none", f"imported under the lock: {done.stdout.strip()}"
    assert done.stdout.split()[1] == "False", "an add imported lancedb"


ADDER = textwrap.dedent("""
    import json, subprocess, sys
    store, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", store, "add", f"{tag} note {i}",
                               "--tag", tag, "--json"], capture_output=True, text=True)
        print(json.dumps({"code": done.returncode, "err": done.stderr.strip(),
                          "id": json.loads(done.stdout)["id"] if done.returncode == 0 else None}), flush=True)
""")


@pytest.mark.slow
def test_concurrent_writers_with_the_default_timeout_all_land(store, cli) -> None:
    store.add("the store exists before the writers start")
    env = {k: v for k, v in os.environ.items() if k != "MEMOS_LOCK_TIMEOUT"}
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(store.root), f"w{n}", "5"], stdout=subprocess.PIPE,
                              text=True, env=env) for n in range(4)]
    results = [json.loads(line) for p in procs for line in p.communicate(timeout=300)[0].splitlines()]
    assert len(results) == 20
    assert [r["err"] for r in results if r["code"] != 0] == []
    listed = {u["id"] for u in json.loads(cli("list", "--json", "-n", "0").out)}
    assert {r["id"] for r in results} <= listed
    assert cli("check").returncode == 0


def test_a_gc_waits_for_another_processes_gc(store) -> None:
    """A write repacks git after its lock (`gc --auto`), so purge's `gc --prune=now` under the lock can
    find another gc running: it waits for it instead of failing."""
    import socket
    import threading

    store.add("a memory, so that there is something to pack")
    holder = subprocess.Popen(["sleep", "30"])
    pid_file = store.root / ".git" / "gc.pid"
    pid_file.write_text(f"{holder.pid} {socket.gethostname()}")
    try:
        threading.Timer(1.5, pid_file.unlink).start()  # the other gc finishes
        store.repo.gc(prune=True)
    finally:
        holder.kill()
    assert not pid_file.exists()


def test_the_hand_edit_check_never_writes_gits_index(store) -> None:
    """`git diff` writes back refreshed stat data under .git/index.lock when it can, and a writer's
    commit (`update-index`) failed if it came at that moment: the check (made by consolidate without
    the store's lock) must leave the index alone, and still tell a touched file from a changed one."""
    touched, changed = store.add("a memory whose file is touched"), store.add("a memory changed by hand")
    later = time.time() + 5
    os.utime(store.root / files.unit_path(touched.id), (later, later))  # stat data stale, content the same
    path = store.root / files.unit_path(changed.id)
    path.write_text(path.read_text().replace("changed by hand", "CHANGED by hand"))
    index = store.root / ".git" / "index"
    before = index.stat().st_mtime_ns
    assert store.hand_edited([touched.id, changed.id]) == [changed.id]  # a pathspec each
    assert store.hand_edited([touched.id, changed.id] * 40) == [changed.id]  # the whole-tree diff
    assert index.stat().st_mtime_ns == before
