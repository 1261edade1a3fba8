"""The store is private: 0700 directories and 0600 files whatever the umask, and `check` says when it is not.

Tests run as root, who may read anything, so they look at the mode bits, not at access.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with this umask (the CLI's subprocesses inherit it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def open_to_others(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """'MODE path' of each file or directory under root (root included) with a group or other bit."""
    found = [f"{stat.S_IMODE(root.stat().st_mode):04o} ."] if root.stat().st_mode & 0o077 else []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if not rel.startswith(skip) and mode & 0o077 and not stat.S_ISLNK(mode):
                found.append(f"{stat.S_IMODE(mode):04o} {rel}")
    return found


def test_a_store_made_by_the_cli_under_umask_022_is_private(cli, tmp_path: Path) -> None:
    root = tmp_path / "store"
    with umask(0o022):
        first = cli("add", "My passport is in the desk drawer", "--json")
        assert first.returncode == 0, first.err
        uid = json.loads(first.out)["id"]
        assert cli("add", "Alice moved to Lisbon").returncode == 0
        assert cli("recall", "passport").returncode == 0  # the access log in .git/memos
        assert cli("forget", uid).returncode == 0
        done = cli("rollback", "HEAD~1", "--yes")  # brings the unit file back
        assert done.returncode == 0, done.err
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / ".git").is_dir() and (root / "tables" / "units.lance").is_dir()
    assert (root / ".git" / "memos").is_dir()
    assert open_to_others(root) == []
    unit_files = list((root / "units").rglob("*.json"))
    assert len(unit_files) == 2
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in unit_files)


def test_the_store_itself_sets_its_modes_without_the_clis_umask(tmp_path: Path, embedder) -> None:
    """Used as a library (no CLI umask), the store still makes its root, unit files, memos.toml,
    .gitignore and git's own files private. (The LanceDB files and .git/memos rely on the
    CLI's umask, inside a root no one else can enter.)"""
    from memos_cli.store.store import MemoryStore

    with umask(0o022):
        store = MemoryStore(tmp_path / "lib", embedder=embedder)
        store.init()
        store.add("Alice moved to Lisbon")
    root = tmp_path / "lib"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert open_to_others(root, skip=("tables", os.path.join(".git", "memos"))) == []
    assert stat.S_IMODE((root / "memos.toml").stat().st_mode) == 0o600


@pytest.mark.parametrize("opened", ["unit file o+r", "root 755"])
def test_check_reports_a_store_opened_to_others_and_repair_closes_it(cli, tmp_path: Path, opened: str) -> None:
    root = tmp_path / "store"
    assert cli("add", "My passport is in the desk drawer").returncode == 0
    assert cli("check").returncode == 0
    if opened == "root 755":
        root.chmod(0o755)
        named = "the store's directory"
    else:
        unit = next((root / "units").rglob("*.json"))
        unit.chmod(unit.stat().st_mode | stat.S_IROTH)
        named = str(unit.relative_to(root))

    done = cli("check", "--json")
    assert done.returncode == 1
    [problem] = json.loads(done.out)["problems"]
    assert problem["area"] == "privacy" and problem["fixable"], problem
    assert named in problem["message"] and f"chmod -R go-rwx {root}" in problem["message"], problem

    fixed = cli("check", "--repair", "--json")
    assert fixed.returncode == 0, fixed.out
    report = json.loads(fixed.out)
    assert report["ok"] is True and [p["fixed"] for p in report["problems"]] == [True], report
    assert open_to_others(root) == []
