"""Upgrading a big store of an older schema (1 or 2) to the current one, once.

Copies a store built by bench_recall.py (default /tmp/memos-100k-v2, which is
only read), turns the copy into a store of an older schema the way the tests
do, and times the first command that sees it: `memos stats` from a shell,
which upgrades the store in one commit, then rebuilds the search table in
its current format from the unit files, reusing the vectors (nothing is
embedded again). A second `memos stats`, with nothing left to do, is timed for
scale.

- schema 2 (one file per unit, as now, but no ``pinned``): ``memos.toml`` says
  2 and the table's marker names no table format (tests/test_pin.py);
- schema 1 (the LanceDB table itself in git, no unit files): the unit files
  and ``.gitignore`` removed, the table committed, ``memos.toml`` says 1
  (tests/test_versions.py). The table keeps today's columns, which the
  upgrade reads as it reads an old table's.

Usage: python benchmarks/bench_upgrade.py [--source /tmp/memos-100k-v2] [--schema 2 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
                          capture_output=True, text=True, check=True).stdout


def set_schema(root: Path, version: int) -> None:
    from memos_cli.store.config import SCHEMA_VERSION

    cfg = root / "memos.toml"
    text = cfg.read_text()
    assert f"schema_version = {SCHEMA_VERSION}" in text, "the source store is not of the current schema"
    cfg.write_text(text.replace(f"schema_version = {SCHEMA_VERSION}", f"schema_version = {version}"))


def make_schema_2(root: Path) -> None:
    from memos_cli.plaintext.table import MARKER

    set_schema(root, 2)
    git(root, "commit", "-qam", "schema 2")
    marker = root / "tables" / MARKER
    old = json.loads(marker.read_text())
    marker.write_text(json.dumps({"head": git(root, "rev-parse", "HEAD").strip(), "version": old["version"]}))


def make_schema_1(root: Path) -> None:
    from memos_cli.plaintext.table import MARKER

    git(root, "rm", "-r", "-q", "--cached", "units", ".gitignore")
    shutil.rmtree(root / "units")
    (root / ".gitignore").unlink()
    (root / "tables" / MARKER).unlink()
    set_schema(root, 1)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "schema 1")


def stats(root: Path) -> tuple[float, str]:
    """Wall seconds of `memos stats --json` in a fresh process, and its stderr."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(root), "stats", "--json"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"memos stats failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stderr.strip()


def check_source(source: Path) -> int:
    from memos_cli.store.follow import is_current
    from memos_cli.store.store import MemoryStore

    if not (source / "memos.toml").is_file():
        sys.exit(f"{source} is not a store; build one with: python benchmarks/bench_recall.py --keep {source}")
    if (source / ".git" / "memos" / "journal.json").exists():
        sys.exit(f"{source} has a write under way (or cut off): wait for it, or let `memos check` undo it")
    store = MemoryStore(source)
    if not is_current(store):
        sys.exit(f"{source}: its search table is not at HEAD; run `memos --store {source} stats` once first")
    return store.table.count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path("/tmp/memos-100k-v2"))
    ap.add_argument("--schema", type=int, nargs="+", default=[2, 1], choices=[1, 2])
    ap.add_argument("--keep", type=Path, help="make the copies here (default: a temporary directory)")
    args = ap.parse_args()

    units = check_source(args.source)
    work = args.keep or Path(tempfile.mkdtemp(prefix="memos-bench-upgrade-"))
    try:
        for version in args.schema:
            root = work / f"schema-{version}"
            shutil.rmtree(root, ignore_errors=True)
            started = time.perf_counter()
            shutil.copytree(args.source, root, symlinks=True)
            (make_schema_2 if version == 2 else make_schema_1)(root)
            print(f"schema {version}: a copy of {units} units made in {time.perf_counter() - started:.0f}s", flush=True)
            first, said = stats(root)
            if f"upgraded the store from schema {version}" not in said:
                sys.exit(f"schema {version}: `memos stats` did not upgrade the store: {said!r}")
            again = median([stats(root)[0] for _ in range(3)])
            print(f"schema {version} -> current at {units} units: `memos stats` {first:.1f}s, once "
                  f"(then {again:.2f}s with nothing to do, median of 3)")
            for line in said.splitlines():
                print(f"  {line}")
            print(f"  {git(root, 'log', '-1', '--format=%s').strip()}", flush=True)
            shutil.rmtree(root)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
