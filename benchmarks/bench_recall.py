"""Recall speed at scale, and CLI start-up.

- in-process recall p50/p95 over a store of --n units (default 100k), query
  embedding included (target: p50 under 20 ms): the default path, whose
  context step brings top hits their neighbouring turns (the units are
  episodes in conversations of 30 turns, each imported with its time), and
  recall with ``context=False``, interleaved;
- cold `memos recall` from a shell against `python -c "import lancedb"`,
  interleaved in the same run (target: at most 1.3 times);
- `memos --help` (target: under 0.3 s).

Usage: python benchmarks/bench_recall.py [--n 100000] [--keep DIR] [--against CHECKOUT]
(--keep reuses a store built by an earlier run: building 100k units takes minutes.)

--against measures the in-process recall of another checkout of memos too
(say ``git worktree add /tmp/before HEAD~5``), in fresh processes taking
turns with this one's, three each, and prints the ratio of their medians:
on a machine whose speed drifts, the figure that survives.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import median, pct, queries, sentences, wall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


SESSION_TURNS = 30  # turns per conversation in the built store
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)


def session_time(i: int) -> str:
    """The time of turn ``i``'s conversation: one per ``SESSION_TURNS`` turns, a day apart."""
    return (EPOCH + timedelta(days=i // SESSION_TURNS)).isoformat()


def build(root: Path, n: int) -> None:
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    texts = sentences(n)
    start = time.perf_counter()
    step = 20000
    # Episodes imported with their conversation's time, as a chat import is: that
    # time marks the thread, so recall's context step (on by default) brings
    # each top hit its neighbouring turns.
    for lo in range(0, n, step):  # a few commits, so the table has a few fragments as in real use
        store.import_records([(i + 1, {"text": t, "kind": "episode", "time": session_time(i), "meta": {"i": i}})
                              for i, t in enumerate(texts[lo:lo + step], lo)])
    print(f"built a store of {n} units (episodes in conversations of {SESSION_TURNS} turns) "
          f"in {time.perf_counter() - start:.0f}s")


def measure(root: Path, n_queries: int, code: str | None = None) -> dict[str, float]:
    if code:  # another checkout's memos_cli, for --against
        sys.path.insert(0, code)
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    store.recall("warm up", 10)
    qs = queries(n_queries)
    # The default path (context on) and recall without the context step,
    # interleaved query by query so that both see the same machine load; which
    # runs first alternates, so neither always finds the other's reads cached.
    lat: dict[bool, list[float]] = {True: [], False: []}
    with_context = 0
    for i, q in enumerate(qs):
        for context in ((True, False) if i % 2 == 0 else (False, True)):
            start = time.perf_counter()
            hits = store.recall(q, 10, context=context)
            lat[context].append((time.perf_counter() - start) * 1000)
            if context:
                with_context += sum(1 for h in hits if h.before or h.after)
    n = store.table.count()
    if code is not None:
        import memos_cli

        print(json.dumps({"code": str(Path(memos_cli.__file__).parents[1]), "context": pct(lat[True], 0.5),
                          "no_context": pct(lat[False], 0.5)}), flush=True)
        return {}
    for context, label in ((True, "default (context on)"), (False, "context=False")):
        print(f"in-process recall at {n} units, k=10, query embedding included, {label}: "
              f"p50 {pct(lat[context], 0.5):.1f} ms, p95 {pct(lat[context], 0.95):.1f} ms ({len(qs)} queries)",
              flush=True)
    print(f"  context step: {with_context} of {len(qs) * 10} hits brought neighbouring turns", flush=True)
    if not with_context:
        print("  warning: no hit brought context, so the default path's figure is that of recall without it "
              "(a store built by an older bench_recall.py, whose episodes have no conversation time?)", flush=True)


def compare(root: Path, n_queries: int, other: Path) -> None:
    """In-process recall p50 of this checkout and ``other``, three fresh processes each, in turns."""
    here = Path(__file__).resolve().parents[1]
    runs: dict[Path, list[dict[str, float]]] = {here: [], other: []}
    for _ in range(3):
        for code in (other, here):
            out = subprocess.run([sys.executable, __file__, "--measure", str(root), "--queries", str(n_queries),
                                  "--code", str(code)], check=True, capture_output=True, text=True).stdout
            runs[code].append(json.loads(out.strip().splitlines()[-1]))
    for key, label in (("context", "default (context on)"), ("no_context", "context=False")):
        mine, theirs = (median([r[key] for r in runs[c]]) for c in (here, other))
        print(f"in-process recall p50, {label}: this checkout {mine:.1f} ms, {other} {theirs:.1f} ms "
              f"(medians of 3 runs each, in turns): ratio {mine / theirs:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--keep", help="build (or reuse) the store here")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--against", metavar="CHECKOUT", help="also measure this checkout's recall, in turns")
    ap.add_argument("--code", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(Path(args.measure), args.queries, args.code)
        return
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-recall-"))
    root = Path(args.keep) if args.keep else tmp / "store"
    try:
        from memos_cli.store.store import MemoryStore

        if not (root / "memos.toml").exists():
            build(root, args.n)
        MemoryStore(root).compact()
        # Measured in a fresh process that only reads, as `memos recall` and a
        # script using the API run: the building process has LanceDB's runtime
        # and caches of the writes still around.
        subprocess.run([sys.executable, __file__, "--measure", str(root), "--queries", str(args.queries)], check=True)
        if args.against:
            compare(root, args.queries, Path(args.against).resolve())

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
