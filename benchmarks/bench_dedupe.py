"""Duplicate detection at scale: time, peak memory, and precision/recall on planted duplicates.

Takes --n units from a store built by bench_recall.py (its texts and MiniLM
vectors; default /tmp/memos-100k), keeps 90% of them as originals and plants
the other 10% as duplicates of random originals, written the way people
repeat themselves: the same sentence in lower case without its full stop, with
a filler word ("really", "actually"), or with "Note:" before it. The planted
texts are embedded with the store's model. Every original carries its own
"(note N)" number, so originals that differ only by it look alike to the
embedding but are different memories: a precision test as well.

Usage: python benchmarks/bench_dedupe.py [--store /tmp/memos-100k] [--n 100000]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILLERS = ["really", "actually", "also", "just"]


def variant(text: str, rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return text.lower().rstrip(".")
    if style == 1:
        first, rest = text.split(" ", 1)
        return f"{first} {rng.choice(FILLERS)} {rest}"
    return f"Note: {text}"


def plant(texts: list[str], n: int, seed: int = 5) -> tuple[list[int], list[str]]:
    """``n`` duplicates of random texts: the index of each one's original, and its text."""
    rng = random.Random(seed)
    picks = [rng.randrange(len(texts)) for _ in range(n)]
    return picks, [variant(texts[i], rng) for i in picks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/memos-100k")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--share", type=float, default=0.10, help="fraction of the units that are planted duplicates")
    args = ap.parse_args()

    import lance

    from memos_cli.models.embedder import default_embedder
    from memos_cli.scheduler.dedupe import SIMILARITY, TEXT_SIMILARITY, find_duplicates

    table = lance.dataset(str(Path(args.store) / "tables" / "units.lance")).to_table(columns=["id", "text", "vector"])
    n_orig = int(args.n * (1 - args.share))
    n_dup = args.n - n_orig
    if table.num_rows < n_orig:
        sys.exit(f"{args.store} has {table.num_rows} units; build one with: python benchmarks/bench_recall.py --keep DIR")
    ids = table.column("id").to_pylist()[:n_orig]
    texts = table.column("text").to_pylist()[:n_orig]
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)[:n_orig]).astype(np.float32)

    sources, planted = plant(texts, n_dup)
    started = time.perf_counter()
    embedder = default_embedder()
    planted_vectors = embedder.embed(planted)
    print(f"embedded {n_dup} planted duplicates in {time.perf_counter() - started:.1f}s")
    dup_ids = [f"zz{k:012d}" for k in range(n_dup)]  # after every original: the originals survive
    all_ids, all_texts = ids + dup_ids, texts + planted
    all_vectors = np.vstack([vectors, planted_vectors])
    del table

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    groups = find_duplicates(all_ids, all_texts, all_vectors)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    found = {(g.survivor, d) for g in groups for d in g.duplicates}
    truth = {(ids[s], dup_ids[k]) for k, s in enumerate(sources)}
    # A duplicate planted twice from one original pairs with it; two planted copies of
    # one original found as survivor and duplicate of each other would count as misses.
    hit = len(found & truth)
    print(f"{len(all_ids)} units ({n_dup} planted duplicates), similarity {SIMILARITY}, words {TEXT_SIMILARITY}")
    print(f"find_duplicates: {seconds:.1f}s, peak traced memory {peak / 2**20:.0f} MiB "
          f"(process peak RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB)")
    print(f"groups {len(groups)}, pairs found {len(found)}, planted {len(truth)}: "
          f"precision {hit / max(1, len(found)):.3f}, recall {hit / len(truth):.3f}")
    wrong = sorted(found - truth)[:5]
    for survivor, dup in wrong:
        print(f"  not planted: {all_texts[all_ids.index(survivor)]!r} ~ {all_texts[all_ids.index(dup)]!r}")


if __name__ == "__main__":
    main()
