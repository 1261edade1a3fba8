"""Concurrent writers: how long one `memos add` holds the store's lock, and many adds at once.

Builds (or copies, --store) a store of --n units (default 10k), then through
the CLI, each add its own process as a script would run it:

1. --serial single `memos add`s one after another: the lock's hold time per
   add (p50, p99, max), read from the lock's own trace ($MEMOS_LOCK_TRACE:
   every release appends how long the lock was waited for and held);
2. --procs processes each running --adds `memos add`s at once, with the
   default lock timeout: how many failed, the wall time, the longest wait for
   the lock and the hold times; then every acknowledged add must be in the
   store and `memos check` must pass.

To compare with an older checkout, run it with `--code DIR` (a worktree of
that commit): its processes import memos from DIR. The trace needs the lock
of this checkout: copy memos_cli/lock.py into DIR first.

Usage: python benchmarks/bench_writers.py [--n 10000] [--serial 40] [--procs 8] [--adds 25]
                                          [--store DIR] [--keep DIR] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import pct, sentences

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADDER = """
import json, subprocess, sys
store, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", store, "add", f"{tag} says hello {i}",
                           "--tag", tag, "--json"], capture_output=True, text=True)
    ok = done.returncode == 0
    print(json.dumps({"code": done.returncode, "id": json.loads(done.stdout)["id"] if ok else None,
                      "err": done.stderr.strip()[:200]}), flush=True)
"""


def build(root: Path, n: int) -> None:
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    texts = sentences(n)
    for lo in range(0, n, 20_000):
        store.import_records([(i + 1, {"text": t}) for i, t in enumerate(texts[lo:lo + 20_000], lo)])
    store.compact()


def traces(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held(records: list[dict]) -> str:
    """Each hold of the store's lock, and each add's holds together (an add may take it twice: for its
    write, and for the commit of a fragment merge its upkeep made after it)."""
    values = [r["held"] * 1000 for r in records if r["lock"] == "lock"]
    if not values:
        return "no trace (is memos_cli/lock.py of this checkout in --code?)"
    per_add: dict[int, float] = {}
    for r in records:
        if r["lock"] == "lock":
            per_add[r["pid"]] = per_add.get(r["pid"], 0.0) + r["held"] * 1000
    sums = list(per_add.values())
    return (f"p50 {pct(values, 0.5):.0f} ms, p99 {pct(values, 0.99):.0f} ms, max {max(values):.0f} ms "
            f"({len(values)} holds); per add, its holds together: p50 {pct(sums, 0.5):.0f} ms, "
            f"p99 {pct(sums, 0.99):.0f} ms, max {max(sums):.0f} ms ({len(sums)} adds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--serial", type=int, default=40)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--adds", type=int, default=25)
    ap.add_argument("--store", help="an existing store to copy instead of building one")
    ap.add_argument("--keep", help="build the store here and keep it (reused by --store)")
    ap.add_argument("--code", help="import memos from this checkout in the writer processes")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-writers-"))
    root = tmp / "store"
    try:
        if args.store:
            shutil.copytree(args.store, root, symlinks=True)
        else:
            started = time.perf_counter()
            build(root, args.n)
            print(f"built a store of {args.n} units in {time.perf_counter() - started:.0f}s")
            if args.keep:
                shutil.copytree(root, args.keep, symlinks=True)
        env = {k: v for k, v in os.environ.items() if k not in ("MEMOS_LOCK_TIMEOUT", "MEMOS_DEBUG")}
        code = str(Path(args.code).resolve()) if args.code else str(ROOT)
        env["PYTHONPATH"] = code  # and the processes run there: `python -m` puts the current directory first
        memos = [sys.executable, "-m", "memos_cli", "--store", str(root)]

        trace = tmp / "serial.jsonl"
        env["MEMOS_LOCK_TRACE"] = str(trace)
        for i, text in enumerate(sentences(args.serial, seed=99)):
            subprocess.run([*memos, "add", text, "--meta", f"serial={i}"], check=True, env=env, cwd=code,
                           stdout=subprocess.DEVNULL)
        print(f"{args.serial} single adds, one after another: lock held {held(traces(trace))}")

        trace = tmp / "concurrent.jsonl"
        env["MEMOS_LOCK_TRACE"] = str(trace)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(root), f"w{n}", str(args.adds)],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=code) for n in range(args.procs)]
        results = [json.loads(line) for p in procs for line in p.communicate()[0].splitlines() if line.strip()]
        wall = time.perf_counter() - started
        failed = [r for r in results if r["code"] != 0]
        records = traces(trace)
        waits = [r["waited"] for r in records if r["lock"] == "lock"]
        print(f"{args.procs} processes x {args.adds} adds at once: {len(failed)} of {len(results)} failed, "
              f"{wall:.1f}s wall; longest wait for the lock {max(waits, default=0):.2f}s; lock held {held(records)}")
        for r in failed[:3]:
            print(f"  failed ({r['code']}): {r['err']}")
        listed = subprocess.run([*memos, "list", "--json", "-n", "0"], capture_output=True, text=True, env=env, cwd=code,
                                check=True)
        ids = {u["id"] for u in json.loads(listed.stdout)}
        lost = [r["id"] for r in results if r["code"] == 0 and r["id"] not in ids]
        check = subprocess.run([*memos, "check"], capture_output=True, text=True, env=env, cwd=code)
        print(f"acknowledged adds missing from the store: {len(lost)}; memos check exit {check.returncode}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
