"""Unit files: the versioned, plain-text form of the memory.

Each unit is one JSON file, ``units/<x>/<y>/<id>.json`` where x and y are the
id's last two characters,
and these files are what git versions: a change of memory is a change of a
few small text files, so history stays near-linear in the number of units,
``memos diff`` and ``show --history`` read a unit's old versions straight from
git, and a purge removes one path from history. The LanceDB table (vectors,
full-text and vector indexes) is derived from them and lives outside git
(see ``store.follow``).

The directory is sharded two levels deep by the ids' last (random)
characters: 32 x 32 directories, about 100 files each at 100k units. Every
commit writes a new git tree object for each directory on the path to a
changed file, so small directories keep each commit small (one level of
1024 directories cost about 20 KB of tree per commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from memos_cli.errors import StoreError, UsageError
from memos_cli.plaintext.units import MemoryUnit

UNITS_DIR = "units"


def unit_path(uid: str) -> str:
    """The unit's file, relative to the store's root (a git path)."""
    return f"{UNITS_DIR}/{uid[-2]}/{uid[-1]}/{uid}.json"


def id_of(path: str) -> str | None:
    """The unit id a git path names, or None for any other file."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != UNITS_DIR or not parts[3].endswith(".json"):
        return None
    return parts[3][:-5]


def dumps(unit: MemoryUnit) -> bytes:
    """The file's bytes: every field but the derived ones (vector and embedding model).

    Pretty-printed with a fixed key order, so that git and ``git diff`` see
    one changed line per changed field.
    """
    data = unit.to_json()
    data.pop("model", None)
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def loads(data: bytes, path: str) -> MemoryUnit:
    """A unit from its file's bytes; ``StoreError`` naming the file when it is not valid."""
    try:
        unit = MemoryUnit.from_json(json.loads(data.decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None
    except UsageError as exc:
        raise StoreError(f"{path}: {exc}") from None
    if unit_path(unit.id) != path:
        raise StoreError(f"{path}: holds unit {unit.id}, whose file is {unit_path(unit.id)}")
    return unit


FILE_MODE = 0o600  # the store is private: its files readable by the owner only, whatever the umask
DIR_MODE = 0o700


def write(root: Path, unit: MemoryUnit) -> str:
    """Write the unit's file (atomically: a reader never sees half of it); returns its path."""
    rel = unit_path(unit.id)
    target = root / rel
    if not target.parent.is_dir():
        for directory in (root / UNITS_DIR, target.parent.parent, target.parent):
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
    tmp = root / temp_path(rel)
    write_private(tmp, dumps(unit))
    os.replace(tmp, target)
    return rel


def write_private(path: Path, data: bytes) -> None:
    """Write a file of the store readable by its owner only (``memos.toml``, ``.gitignore``, a unit's
    bytes before they are renamed into place)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)  # a file left by a killed write may have another mode
        fh.write(data)


def temp_path(rel: str) -> str:
    """Where ``write`` puts a unit file's bytes (or ``memos.toml``'s) before renaming them into place."""
    head, _, name = rel.rpartition("/")
    return f"{head}/.{name}.tmp" if head else f".{name}.tmp"


def is_temp(rel: str) -> bool:
    name = rel.rpartition("/")[2]
    return rel.startswith(UNITS_DIR + "/") and name.startswith(".") and name.endswith(".json.tmp")


def remove(root: Path, uid: str) -> str:
    rel = unit_path(uid)
    (root / rel).unlink(missing_ok=True)
    return rel


def read(root: Path, uid: str) -> MemoryUnit | None:
    rel = unit_path(uid)
    try:
        return loads((root / rel).read_bytes(), rel)
    except FileNotFoundError:
        return None
