"""Single `add` latency at 1k and 100k units.

p50/p95 of single adds (one commit each, in-process API) into stores of 1k
and --big (default 100k) units (target: flat). History size after many single
adds is bench_history.py's.

Usage: python benchmarks/bench_add.py [--big 100000] [--big-store DIR]
(--big-store reuses the store built by bench_recall.py --keep DIR.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import pct, sentences

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def add_latency(store, n: int) -> list[float]:
    lat = []
    for i, text in enumerate(sentences(n, seed=99)):
        start = time.perf_counter()
        store.add(text, kind="note", meta={"single": i})
        lat.append((time.perf_counter() - start) * 1000)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--probe", type=int, default=200, help="single adds timed at each size")
    ap.add_argument("--big-store", help="an existing store of about --big units to copy")
    args = ap.parse_args()
    from memos_cli.store.store import MemoryStore

    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-add-"))
    try:
        sizes = [("1k", 1000, None), (f"{args.big // 1000}k", args.big, args.big_store)]
        for label, n, existing in sizes:
            root = tmp / f"s{label}"
            if existing:
                shutil.copytree(existing, root)
            store = MemoryStore(root)
            if not existing:
                texts = sentences(n)
                for lo in range(0, n, 20000):
                    store.import_records([(i + 1, {"text": t}) for i, t in enumerate(texts[lo:lo + 20000], lo)])
            store.compact()
            lat = add_latency(store, args.probe)
            print(f"single add at {store.table.count() - args.probe} units: p50 {pct(lat, 0.5):.1f} ms, "
                  f"p95 {pct(lat, 0.95):.1f} ms, max {max(lat):.0f} ms ({args.probe} adds)")
            shutil.rmtree(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
