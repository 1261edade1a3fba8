"""The store's writer lock: exclusive, bounded wait, and it names its holder.

An ``fcntl`` lock on a file inside ``.git/memos/`` (never versioned). The
kernel drops it when the holding process dies, so a crashed writer never
leaves the store locked; what it wrote is undone by the journal (see
``transaction.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from memos_cli.errors import LockedError

# What this process runs, for the message another writer gets while it holds the lock:
# the CLI sets its command path ("memos config set"). Arguments are left out: they may be
# memory text, and global options such as --store come before the command.
command: str | None = None


def _command() -> str:
    if command:
        return command[:100]
    return os.path.basename(sys.argv[0])[:100] if sys.argv and sys.argv[0] else "python"


MAX_POLL = 0.05  # seconds between tries at most: a writer waiting behind a long run gets in between its slices
TRACE_ENV = "MEMOS_LOCK_TRACE"  # a file: each release appends how long the lock was waited for and held


def _trace(name: str, waited: float, held: float) -> None:
    """For the benchmarks: one JSON line per lock taken, when ``$MEMOS_LOCK_TRACE`` names a file."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"lock": name, "pid": os.getpid(), "command": _command(), "waited": round(waited, 4),
                       "held": round(held, 4), "at": round(time.time(), 3)}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # tracing must never fail a write


class StoreLock:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._taken = 0.0
        self._waited = 0.0
        self._umask = 0o077

    def holder(self) -> str:
        """Who holds the lock, as written by its holder."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "another process"
        if not isinstance(info, dict):
            return "another process"

        def field(name: str) -> str:  # as written by another process: no control characters, not too long
            return "".join(ch if ch.isprintable() else "?" for ch in str(info.get(name, "?")))[:100]

        return f"pid {field('pid')} on {field('host')} ({field('command')}, since {field('since')})"

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        started = time.monotonic()
        deadline = started + (self.timeout if blocking else 0)
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    if not blocking:
                        return False
                    raise LockedError(
                        f"the store is locked by {self.holder()}; gave up after {self.timeout:g}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, MAX_POLL)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        # What is written under the lock is private whatever the umask, also when memos is used as a
        # library (the CLI sets this umask for its whole run): LanceDB's files, the journal, git's
        # checkouts of unit files. The umask is the process's, so it is given back at release.
        self._umask = os.umask(0o077)
        os.umask(self._umask | 0o077)
        self._taken = time.monotonic()
        self._waited = self._taken - started
        return True

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
                os.umask(self._umask)
                _trace(self.path.name, self._waited, time.monotonic() - self._taken)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
