"""Where things are in a memory directory, and the small file helpers the store's parts share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memos_cli.plaintext import files

TABLES_DIR = "tables"  # derived data (the search table, activation caches), ignored by git
RUN_LOCK = "consolidate.lock"  # in the state dir: held by a `memos consolidate` run


def write_gitignore(root: Path) -> None:
    files.write_private(root / ".gitignore", (
        "# Derived data, rebuilt from the unit files: the LanceDB table and its indexes.\n"
        f"/{TABLES_DIR}/\n"
    ).encode())


def append(path: Path, data: bytes) -> None:
    """One O_APPEND write: lines from concurrent processes do not interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
