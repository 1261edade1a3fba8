"""History size after many single adds, and the speed of the history commands at that size.

- --singles (default 10k) single `add` calls (in-process API, one commit each)
  into an empty store: add latency, then the size of .git and of the (untracked)
  search table, before and after `compact` (git gc and table compaction);
- wall time (CLI, fresh process, median of --repeat) of `memos log -n 20`,
  `memos log --json` (all commits), `memos diff`, `memos diff HEAD~100`,
  `memos show ID --history` and `memos check`.

Usage: python benchmarks/bench_history.py [--singles 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import du, median, mib, pct, sentences, wall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sizes(root: Path) -> dict[str, int]:
    return {"git": du(root / ".git"), "tables": du(root / "tables"), "units": du(root / "units")}


def show(label: str, s: dict[str, int]) -> None:
    print(f"{label:<16} .git {mib(s['git']):>10}   unit files {mib(s['units']):>10}   search table {mib(s['tables']):>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", help="build the store here and keep it")
    args = ap.parse_args()

    from memos_cli.store.store import MemoryStore

    tmp = None
    if args.keep:
        root = Path(args.keep)
        shutil.rmtree(root, ignore_errors=True)
    else:
        tmp = tempfile.mkdtemp(prefix="memos-bench-history-")
        root = Path(tmp) / "store"
    try:
        store = MemoryStore(root)
        store.init()
        lat = []
        started = time.perf_counter()
        first_id = None
        for i, text in enumerate(sentences(args.singles, seed=5)):
            t0 = time.perf_counter()
            unit = store.add(text, kind="note", meta={"single": i})
            lat.append((time.perf_counter() - t0) * 1000)
            first_id = first_id or unit.id
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} adds, {time.perf_counter() - started:.0f}s", file=sys.stderr)
        edited = store.edit(first_id, {"text": "an edited memory, to give show --history two versions"})
        assert edited is not None
        first, last = lat[:1000], lat[-1000:]
        print(f"{args.singles} single adds in {time.perf_counter() - started:.0f}s: "
              f"p50 {median(first):.1f} ms (first 1000), {median(last):.1f} ms (last 1000); p95 {pct(lat, 0.95):.1f} ms")
        commits = int(subprocess.run(["git", "-C", str(root), "rev-list", "--count", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout)
        print(f"commits: {commits}, table fragments: {store.table.fragments()}")
        show("before compact", sizes(root))
        t0 = time.perf_counter()
        store.compact()
        print(f"compact took {time.perf_counter() - t0:.1f}s")
        show("after compact", sizes(root))

        memos = str(Path(sys.executable).with_name("memos"))
        env = {**os.environ, "MEMOS_HOME": str(root)}
        for cmd in (["log", "-n", "20"], ["log", "--json"], ["diff"], ["diff", "HEAD~100"],
                    ["show", first_id, "--history"], ["check"]):
            times = [wall([memos, *cmd], env=env) for _ in range(args.repeat)]
            print(f"memos {' '.join(cmd):<34} median {median(times) * 1000:7.0f} ms  (of {args.repeat})")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
