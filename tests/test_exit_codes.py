"""The exit codes the README lists, each from a real command: 1 cancelled or
`check` found problems, 2 bad input, 3 not found, 4 locked, 5 store unusable,
6 model, and 130 interrupted (Ctrl-C). Each failure is one line on stderr and
leaves the store as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memos_cli.lock import StoreLock

from .conftest import assert_clean_failure, git, head


@pytest.fixture
def filled(store) -> tuple[Path, str]:
    """A store of one memory, where the ``cli`` fixture works: its root and the memory's id."""
    return store.root, store.add("Alice moved to Lisbon in May.").id


def test_bad_input_exits_2(filled, cli) -> None:
    root, _ = filled
    before = head(root)
    for args, match in ((["add", "x", "--time", "sometime"], "bad time"),  # values the core refuses
                        (["add", "x", "--ttl", "5x"], "bad ttl"),
                        (["import", "-"], "line 1: text must be a string"),
                        (["recall", "Lisbon", "-k", "0"], "invalid value for '-k'"),  # ones the parser refuses
                        (["list", "--no-such-flag"], "no such option")):
        done = cli(*args, input='{"text": 1}\n')
        assert_clean_failure(done, root, before, match)
        assert done.returncode == 2, (args, done.err)


def test_not_found_exits_3(filled, cli) -> None:
    root, uid = filled
    before = head(root)
    missing = uid[:-4] + ("zzzz" if not uid.endswith("zzzz") else "yyyy")
    for args in (["show", missing], ["forget", missing], ["edit", missing, "--text", "x"]):
        done = cli(*args)
        assert_clean_failure(done, root, before, missing)
        assert done.returncode == 3, (args, done.err)


def test_locked_exits_4(filled, cli) -> None:
    root, _ = filled
    before = head(root)
    lock = StoreLock(root / ".git" / "memos" / "lock")  # as another writer holds it
    assert lock.acquire(blocking=False)
    try:
        done = cli("add", "Bob adopted a dog.", env={"MEMOS_LOCK_TIMEOUT": "0.5"})
    finally:
        lock.release()
    assert_clean_failure(done, root, before, f"locked by pid {os.getpid()}")
    assert done.returncode == 4 and "gave up after 0.5s" in done.err
    assert cli("add", "Bob adopted a dog.").returncode == 0  # once the lock is free, the same add works


def test_store_unusable_exits_5(filled, cli, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("not a store\n")
    for args, match in ((["add", "x"], "exists and is not a memos store"), (["list"], "no memos store at")):
        done = cli(*args, store=other)
        assert_clean_failure(done, match=match)
        assert done.returncode == 5, (args, done.err)
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]  # nothing was written into it
    # A store written by a newer memos: refused before anything is read or written.
    root, _ = filled
    cfg = root / "memos.toml"
    cfg.write_text(cfg.read_text().replace("schema_version = 3", "schema_version = 99"))
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "from the future")
    before = head(root)
    for args in (["add", "x"], ["list"], ["recall", "Lisbon"]):
        done = cli(*args)
        assert_clean_failure(done, root, before, "written by a newer memos")
        assert done.returncode == 5, (args, done.err)


def test_model_exits_6(filled, cli, tmp_path: Path) -> None:
    root, _ = filled
    before = head(root)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    for args, match in ((["chat", "Where does Alice live?", "--model", str(tmp_path / "nonexistent.gguf")],
                         "chat model not found"),
                        (["chat", "Where does Alice live?", "--model", str(not_gguf)], "not a GGUF")):
        done = cli(*args)
        assert_clean_failure(done, root, before, match)
        assert done.returncode == 6, (args, done.err)


def test_cancelled_exits_1(filled, tmp_path: Path) -> None:
    """Asked on a terminal and answered no: exit 1, nothing changed."""
    root, uid = filled
    before = head(root)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "purge", uid],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(master, b"n\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 1, err.decode()
    # The question (no newline: the answer is typed after it), then the one line of the refusal.
    assert err.decode().endswith("? [y/N] memos: error: cancelled; nothing changed\n") and out == b""
    assert "Traceback" not in err.decode()
    assert head(root) == before and git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_check_finding_a_problem_exits_1(filled, cli) -> None:
    root, uid = filled
    assert cli("check").returncode == 0
    unit_file = next((root / "units").rglob(f"{uid}.json"))
    unit_file.unlink()  # a hand deletion: the search table still has it
    done = cli("check")
    assert done.returncode == 1 and "Traceback" not in done.err, (done.out, done.err)


def _blocked_reading_stdin(pid: int) -> bool:
    """Whether process ``pid`` sits in read(2) on its fd 0 (Linux: /proc/PID/syscall)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == 0  # x86-64 read, fd 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="watches the child's system call through /proc (Linux x86-64)")
def test_ctrl_c_exits_130_and_changes_nothing(filled) -> None:
    """Ctrl-C while `memos add -` waits for its text: exit 130, one line, nothing written."""
    root, _ = filled
    before = head(root)
    proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "add", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _blocked_reading_stdin(proc.pid):  # past start-up, inside the command
            assert proc.poll() is None and time.monotonic() < deadline, "memos add - never read stdin"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip() == "memos: interrupted" and out == b""
    assert head(root) == before and git(root, "status", "--porcelain", "--untracked-files=all") == ""
