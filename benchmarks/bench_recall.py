"""Recall speed at scale, and CLI start-up.

- in-process recall p50/p95 over a store of --n units (default 100k), query
  embedding included (target: p50 under 20 ms);
- cold `memos recall` from a shell against `python -c "import lancedb"`,
  interleaved in the same run (target: at most 1.3 times);
- `memos --help` (target: under 0.3 s).

Usage: python benchmarks/bench_recall.py [--n 100000] [--keep DIR]
(--keep reuses a store built by an earlier run: building 100k units takes minutes.)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median, pct, queries, sentences, wall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(root: Path, n: int) -> None:
    from memos_cli.core.store import MemoryStore

    store = MemoryStore(root)
    texts = sentences(n)
    start = time.perf_counter()
    step = 20000
    for lo in range(0, n, step):  # a few commits, so the table has a few fragments as in real use
        store.import_records([(i + 1, {"text": t, "kind": "episode", "meta": {"i": i}})
                              for i, t in enumerate(texts[lo:lo + step], lo)])
    print(f"built a store of {n} units in {time.perf_counter() - start:.0f}s")


def measure(root: Path, n_queries: int) -> None:
    from memos_cli.core.store import MemoryStore

    store = MemoryStore(root)
    store.recall("warm up", 10)
    lat = []
    for q in queries(n_queries):
        start = time.perf_counter()
        store.recall(q, 10)
        lat.append((time.perf_counter() - start) * 1000)
    print(f"in-process recall at {store.table.count()} units, k=10, query embedding included: "
          f"p50 {pct(lat, 0.5):.1f} ms, p95 {pct(lat, 0.95):.1f} ms ({len(lat)} queries)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--keep", help="build (or reuse) the store here")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    if args.measure:
        return measure(Path(args.measure), args.queries)
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-recall-"))
    root = Path(args.keep) if args.keep else tmp / "store"
    try:
        from memos_cli.core.store import MemoryStore

        if not (root / "memos.toml").exists():
            build(root, args.n)
        MemoryStore(root).compact()
        # Measured in a fresh process that only reads, as `memos recall` and a
        # script using the API run: the building process has LanceDB's runtime
        # and caches of the writes still around.
        subprocess.run([sys.executable, __file__, "--measure", str(root), "--queries", str(args.queries)], check=True)

        memos = [sys.executable, "-m", "memos_cli"]
        cold, base, helps = [], [], []
        for _ in range(7):  # interleaved, so both see the same machine load
            base.append(wall([sys.executable, "-c", "import lancedb"]))
            cold.append(wall(memos + ["--store", str(root), "recall", "who went to Lisbon", "--json"]))
            helps.append(wall(memos + ["--help"]))
        print(f"cold `memos recall` {median(cold):.2f}s vs `python -c 'import lancedb'` {median(base):.2f}s "
              f"(medians of 7): ratio {median(cold) / median(base):.2f}")
        print(f"`memos --help`: {median(helps) * 1000:.0f} ms (median of 7)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
