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

from .errors import LockedError


class StoreLock:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as written by its holder."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "another process"
        cmd = info.get("command", "?")
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({cmd}, since {info.get('since', '?')})"

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (self.timeout if blocking else 0)
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
                delay = min(delay * 2, 0.2)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["memos", *sys.argv[1:3]]) if sys.argv else "memos",
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

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
