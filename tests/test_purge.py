"""Purge: the text leaves the store, its table and every object of git history."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memos_cli.errors import NotFoundError
from memos_cli.store import check as checking
from memos_cli.store import history
from memos_cli.store.killpoint import ENV as KILL_AT
from memos_cli.store.purge import chat_history_path, purge, purge_mark
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, commit_count, git, head

SECRET = "hunter2-Zebra-Quokka-7781"
GITHUB_TOKEN = "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"
ALLOW = {"*": "allow"}  # these tests store a secret on purpose (the privacy guard would refuse it)


def _objects(root: Path) -> bytes:
    """The content of every object in the repository, reachable or not, loose or packed."""
    return subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=root, capture_output=True,
                          check=True).stdout


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_purge_removes_the_text_from_every_object_and_file(store):
    keep = store.add("Alice lives in Lisbon")
    leak = store.add(f"the server password is {SECRET}", tags=["ops"], privacy=ALLOW)
    store.recall("server password", 1)  # an access count, folded into the next commit
    store.edit(leak.id, {"text": f"the server password is {SECRET} (rotated soon)"}, privacy=ALLOW)
    store.forget([leak.id])
    store.add("another memory after the leak")
    store.compact()
    assert SECRET.encode() in _objects(store.root)
    commits = commit_count(store.root)

    report = purge(store, [leak.id])
    assert report.ids == [leak.id] and report.commits_rewritten >= 3 and report.blobs_removed >= 3
    assert SECRET.encode() not in _objects(store.root)
    assert _files_holding(store.root, SECRET.encode()) == []
    assert _files_holding(store.root, b"hunter2") == []
    assert git(store.root, "reflog", "--all") == "" or SECRET not in git(store.root, "reflog", "--all")
    # Everything else is as it was; history keeps its shape, plus the purge.
    assert commit_count(store.root) == commits + 1
    assert history.log(store, 1)[0].op == "purge"
    assert [u.id for u in store.list(limit=0)] == [u.id for u in store.list(limit=0) if u.id != leak.id]
    assert keep.id in [u.id for u in store.list(limit=0)]
    assert store.recall("server password", 5) == [] or all(h.unit.id != leak.id for h in store.recall("password", 5))
    with pytest.raises(NotFoundError):
        store.get(leak.id)
    assert checking.check(store).ok
    store.add("life goes on")
    assert checking.check(store).ok


def test_purge_of_an_id_only_in_history_needs_in_history(store):
    store.add("kept")
    target = head(store.root)
    gone = store.add(f"rolled back secret {SECRET}")
    store.rollback(target)
    before = head(store.root)
    with pytest.raises(NotFoundError, match="only in its history"):
        purge(store, [gone.id])
    with pytest.raises(NotFoundError, match="no memory"):
        purge(store, ["0000000000zzzz"])
    assert head(store.root) == before
    report = purge(store, [gone.id], in_history=True)
    assert report.in_store == []
    assert SECRET.encode() not in _objects(store.root)
    assert checking.check(store).ok


def test_cli_purge(cli, tmp_path):
    root = tmp_path / "store"
    done = cli("add", f"token {SECRET}")
    uid = done.out.strip()
    cli("add", "harmless")
    before = head(root)
    assert_clean_failure(cli("purge", uid), root, before, "--yes")
    assert_clean_failure(cli("purge", "zzzz9999", "--yes"), root, before, "no memory")
    done = cli("purge", uid, "--yes", "--json")
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    assert out["purged"] == [uid] and out["commits_rewritten"] == 2  # the add and the purge
    assert SECRET.encode() not in _objects(root)
    assert json.loads(cli("check", "--json").out)["ok"] is True


# ---- a purge killed at any step is finished by the next command ----------------------------------------

# The case, killed after the commit and before the rewrite, runs in the quick loop; each
# kill costs two commands (the purge, and the one that finishes it), 5-8 s of CPU in all.
PURGE_POINTS = [pytest.param("purge.started", marks=pytest.mark.slow), pytest.param("written", marks=pytest.mark.slow),
                "committed",
                pytest.param("purge.rewritten", marks=pytest.mark.slow), pytest.param("purge.pruned", marks=pytest.mark.slow)]


def _leaky(store: MemoryStore) -> tuple[str, str]:
    """A store with a secret in several versions, other memories around it, and the secret typed
    into the chat's line history; returns (the leak's id, a kept id)."""
    keep = store.add("Alice lives in Lisbon")
    leak = store.add(f"the server password is {SECRET}", tags=["ops"], privacy=ALLOW)
    store.edit(leak.id, {"text": f"the server password is {SECRET} (rotated soon)"}, privacy=ALLOW)
    store.add("another memory after the leak")
    chat_history_path(store).write_text(f"what is the server password {SECRET}?\n", encoding="utf-8")
    return leak.id, keep.id


def _assert_purged(root: Path, leak: str, keep: str, commits: int, embedder) -> None:
    assert SECRET.encode() not in _objects(root)
    assert _files_holding(root, SECRET.encode()) == []  # work tree, all of .git (state, packs, logs), tables/
    assert not (root / ".git" / "memos" / "purge.json").exists()
    assert not (root / ".git" / "memos" / "journal.json").exists()
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    subjects = git(root, "log", "--format=%s").splitlines()
    assert sum(s.startswith("purge: ") for s in subjects) == 1, subjects  # one purge commit, never two
    assert commit_count(root) == commits + 1
    after = MemoryStore(root, embedder=embedder)
    assert [u.id for u in after.get_many([keep, leak])] == [keep]
    report = checking.check(after)
    assert report.ok, [p.message for p in report.problems]


@pytest.mark.parametrize("point", PURGE_POINTS)
def test_a_purge_killed_at_any_step_is_finished_by_the_next_command(point: str, store, cli):
    root = store.root
    leak, keep = _leaky(store)
    commits = commit_count(root)
    done = cli("purge", leak, "--yes", env={KILL_AT: point})
    assert done.returncode == -signal.SIGKILL, f"not killed at {point}: {done.returncode} {done.err}"
    assert (root / ".git" / "memos" / "purge.json").exists()

    after = cli("stats", "--json")  # any command: it finishes the purge before its own work
    assert after.returncode == 0, after.err
    assert "finished an interrupted purge of 1 unit" in after.err, after.err
    assert json.loads(after.out)["units"] == 2
    _assert_purged(root, leak, keep, commits, store.embedder)


@pytest.mark.slow
def test_finishing_an_interrupted_purge_survives_kills_too(store, cli):
    root = store.root
    leak, keep = _leaky(store)
    commits = commit_count(root)
    assert cli("purge", leak, "--yes", env={KILL_AT: "purge.started"}).returncode == -signal.SIGKILL
    # Each next command is killed in turn while it finishes the purge, at each of its steps.
    for point in ["written", "committed", "purge.rewritten", "purge.pruned"]:
        done = cli("stats", "--json", env={KILL_AT: point})
        assert done.returncode == -signal.SIGKILL, f"not killed at {point}: {done.returncode} {done.err}"
        assert (root / ".git" / "memos" / "purge.json").exists()
    after = cli("stats", "--json")
    assert after.returncode == 0 and "finished an interrupted purge of 1 unit" in after.err, after.err
    _assert_purged(root, leak, keep, commits, store.embedder)


def test_a_purge_that_fails_before_its_commit_is_undone_and_not_carried_on(store):
    leak = store.add(f"token {SECRET}")
    before = head(store.root)
    chat_history_path(store).mkdir(parents=True)  # a directory where the line history is: clearing it fails
    with pytest.raises(OSError):
        purge(store, [leak.id])
    assert head(store.root) == before
    assert not (store.root / ".git" / "memos" / "purge.json").exists()
    chat_history_path(store).rmdir()
    after = MemoryStore(store.root, embedder=store.embedder)
    after.add("the next write")  # finds no purge to finish: the one that failed is not run behind the user's back
    assert SECRET in after.get(leak.id).text
    assert checking.check(after).ok


# ---- the chat's line history --------------------------------------------------------------------------


def test_chat_line_history_is_kept_per_store_and_a_purge_clears_it(store, tmp_path, embedder):
    import readline

    from memos_cli.cli import chat as chat_cli
    from memos_cli.models.registry import cache_dir

    other = MemoryStore(tmp_path / "other", embedder=embedder)
    other.init()
    leak = store.add(f"the wifi password is {SECRET}", privacy=ALLOW)
    legacy = cache_dir() / "chat_history"  # where memos once kept one history for all stores
    legacy.write_text(f"{SECRET}\n", encoding="utf-8")

    # A session of this store ends: its lines go to this store's history, private.
    began = purge_mark(store)
    readline.clear_history()
    readline.add_history(f"what is the wifi password {SECRET}?")
    chat_cli._save_history(readline, store, began)
    path = chat_history_path(store)
    assert path.parent == store.root / ".git" / "memos"
    assert SECRET in path.read_text(encoding="utf-8")
    assert path.stat().st_mode & 0o777 == 0o600
    # Another store's session keeps its own.
    readline.clear_history()
    readline.add_history("what does Bob drink?")
    chat_cli._save_history(readline, other, purge_mark(other))
    assert SECRET not in chat_history_path(other).read_text(encoding="utf-8")

    # A second session of this store begins before the purge (it read the history) and ends after it.
    began = purge_mark(store)
    readline.clear_history()
    readline.read_history_file(str(path))
    report = purge(store, [leak.id])
    assert not path.exists() and not legacy.exists()
    assert any(str(legacy) in note for note in report.notes)
    chat_cli._save_history(readline, store, began)
    assert not path.exists()  # not written back
    assert _files_holding(store.root, SECRET.encode()) == []
    assert "what does Bob drink?" in chat_history_path(other).read_text(encoding="utf-8")
    # A session that begins after the purge keeps its history again.
    readline.clear_history()
    readline.add_history("hello again")
    chat_cli._save_history(readline, store, purge_mark(store))
    assert "hello again" in path.read_text(encoding="utf-8")
    readline.clear_history()


class _Terminal:
    """`memos chat` on a pseudo-terminal, as a person would use it."""

    def __init__(self, root: Path) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "chat", "--no-save",
                                      "--max-tokens", "4"], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**os.environ, "TERM": "dumb"})
        os.close(slave)
        self.master = master
        self.seen = b""

    def until(self, marker: bytes, timeout: float = 90) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"timed out waiting for {marker!r}; got {self.seen[-500:]!r}"
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # the session has ended
                break
        head, _, self.seen = self.seen.partition(marker)
        return head

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def quit(self) -> str:
        self.type("/quit")
        assert self.proc.wait(timeout=60) == 0
        rest = self.until(b"\0", timeout=5)  # whatever it said on the way out
        os.close(self.master)
        return rest.decode(errors="replace")


@pytest.mark.slow
def test_a_chat_session_on_a_terminal_keeps_its_history_in_the_store_and_a_purge_removes_it(cli, tmp_path):
    root = tmp_path / "store"
    leak = cli("add", f"the wifi password is {SECRET}", "--privacy", "allow").out.strip()
    path = root / ".git" / "memos" / "chat_history"

    session = _Terminal(root)
    session.until(b"you> ")
    session.type(f"/paste {SECRET}")  # an unknown command: in the line history, nothing asked of the model
    session.until(b"you> ")
    session.type(f"/paste {GITHUB_TOKEN}")  # what the privacy policy refuses stays out of the line history
    session.until(b"you> ")
    session.quit()
    assert SECRET in path.read_text(encoding="utf-8")
    assert "/paste ghp_" not in path.read_text(encoding="utf-8")
    assert path.stat().st_mode & 0o777 == 0o600

    session = _Terminal(root)  # open while the purge runs
    session.until(b"you> ")
    session.type(f"/again {SECRET}")
    session.until(b"you> ")
    done = cli("purge", leak, "--yes")
    assert done.returncode == 0, done.err
    assert not path.exists()
    said = session.quit()
    assert "line history was not saved: a purge ran meanwhile" in said
    assert _files_holding(root, SECRET.encode()) == []
