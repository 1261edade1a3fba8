"""Single `add` latency at 1k and 100k units, and history size after many single adds.

- p50/p95 of single adds (one commit each, in-process API) into stores of 1k
  and --big (default 100k) units (target: flat);
- store and .git size after --singles (default 10k) single adds into an empty
  store, then after `compact`.

Usage: python benchmarks/bench_add.py [--big 100000] [--singles 10000] [--big-store DIR]
(--big-store reuses the store built by bench_recall.py --keep DIR.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import du, mib, pct, sentences

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
    ap.add_argument("--singles", type=int, default=10_000)
    ap.add_argument("--probe", type=int, default=200, help="single adds timed at each size")
    ap.add_argument("--big-store", help="an existing store of about --big units to copy")
    args = ap.parse_args()
    from memos_cli.core.store import MemoryStore

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

        root = tmp / "singles"
        store = MemoryStore(root)
        start = time.perf_counter()
        lat = add_latency(store, args.singles)
        print(f"{args.singles} single adds in {time.perf_counter() - start:.0f}s "
              f"(p50 {pct(lat, 0.5):.1f} ms, p95 {pct(lat, 0.95):.1f} ms; "
              f"first 1k p50 {pct(lat[:1000], 0.5):.1f} ms, last 1k p50 {pct(lat[-1000:], 0.5):.1f} ms)")
        print(f"after {args.singles} single adds: tables {mib(du(root / 'tables'))}, .git {mib(du(root / '.git'))}, "
              f"fragments {store.table.fragments()}")
        sizes_after = store.compact()
        print(f"after compact: tables {mib(sizes_after['tables_bytes_after'])}, "
              f".git {mib(sizes_after['git_bytes_after'])}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
