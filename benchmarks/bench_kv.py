"""Activation memory: time to first token with a saved KV cache against prefilling
the same memory block, cache size per token, and save/load throughput.

For each block size (--sizes, in tokens; default 500 1000 2000 4000) a cube
gets pinned memories rendering to about that many tokens, and `memos kv build
--pinned` saves its cache. Then, asking the same question with greedy decoding:

- warm: in one process with the model loaded, a chat session (head from the
  cache, or prefilled) and its first answer token, median of --repeat;
- fresh: `memos chat QUESTION --json --no-save` in a new process each time,
  with and without `--no-kv`: time to first token from the command's own
  timings (model loaded -> first token) and the whole wall time of the command.

Every answer must be the same both ways (greedy decoding); the benchmark says so.

Usage: python benchmarks/bench_kv.py [--sizes 500 1000 2000 4000] [--repeat 3] [--keep DIR]
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

from common import median, sentences

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What did Alice do in Lisbon?"


def build_store(root: Path, sizes: list[int]) -> None:
    from memos_cli.activation.prompt import INSTRUCTIONS, memory_line
    from memos_cli.models.generator import load_generator
    from memos_cli.plaintext.units import build_unit
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    generator = load_generator(None)
    lines = iter(sentences(20_000, seed=3))
    for size in sizes:
        units, tokens = [], generator.count(INSTRUCTIONS) + 6
        while tokens < size:
            unit = build_unit(next(lines), cube=f"p{size}", pinned=True)
            tokens += generator.count(memory_line(unit)) + 1
            units.append(unit)
        store.embed(units)
        with store.transaction("import", cube=f"p{size}") as txn:
            store.save(txn, units, new=True)
            txn.ids = [u.id for u in units]
    generator.close()


def memos(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["memos", "--store", str(root), *args], check=True, capture_output=True, text=True)


def warm(root: Path, sizes: list[int], repeat: int) -> dict[int, dict[str, float]]:
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    generator = load_generator(None)
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        row: dict[str, list[float]] = {"kv": [], "prefill": [], "answers_equal": []}
        for _ in range(repeat):
            answers = {}
            for mode in ("kv", "prefill"):
                options = ChatOptions(cube=f"p{size}", temperature=0.0, max_tokens=24, save=False, use_kv=mode == "kv")
                started = time.perf_counter()
                session = ChatSession(store, generator, options)
                assert session.head.source == mode, (session.head.source, session.notices)
                stream = session.ask(QUESTION)
                next(stream)
                row[mode].append(time.perf_counter() - started)
                answers[mode] = "".join(stream)
            row["answers_equal"].append(float(answers["kv"] == answers["prefill"]))
        out[size] = {k: median(v) if k != "answers_equal" else min(v) for k, v in row.items()}
    generator.close()
    return out


def fresh(root: Path, sizes: list[int], repeat: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        runs: dict[str, list[dict[str, float]]] = {"kv": [], "prefill": []}
        answers: dict[str, set[str]] = {"kv": set(), "prefill": set()}
        for _ in range(repeat):
            for mode in ("kv", "prefill"):
                extra = [] if mode == "kv" else ["--no-kv"]
                started = time.perf_counter()
                done = memos(root, "chat", QUESTION, "--cube", f"p{size}", "--temperature", "0", "--max-tokens", "24",
                             "--no-save", "--json", *extra)
                wall_s = time.perf_counter() - started
                data = json.loads(done.stdout)
                assert data["head"]["source"] == mode, (data["head"], done.stderr)
                runs[mode].append({"ttft": data["timings"]["ttft_s"], "wall": wall_s,
                                   "read": data["head"]["kv_read_seconds"], "head": data["head"]["seconds"]})
                answers[mode].add(data["answer"])
        row = {f"{mode}_{key}": median([r[key] for r in runs[mode]]) for mode in runs for key in runs[mode][0]}
        row["answers_equal"] = float(answers["kv"] == answers["prefill"] and len(answers["kv"]) == 1)
        out[size] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the store here and keep it (reused when it exists)")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="memos-kv-")) / "store"
    os.environ.setdefault("MEMOS_USER", "bench")
    if not (root / "memos.toml").exists():
        build_store(root, args.sizes)
    builds = {}
    for size in args.sizes:
        started = time.perf_counter()
        data = json.loads(memos(root, "kv", "build", "--pinned", "--cube", f"p{size}", "--json").stdout)
        data["wall"] = time.perf_counter() - started
        builds[size] = data

    from memos_cli.models import kvcache
    from memos_cli.models.generator import load_generator
    from memos_cli.store.caches import kv_dir
    from memos_cli.store.store import MemoryStore

    print(f"{'block':>6} {'tokens':>7} {'cache':>9} {'B/token':>8} {'build':>7} {'write MB/s':>10} "
          f"{'read+verify MB/s':>16} {'restore MB/s':>12}")
    store = MemoryStore(root)
    generator = load_generator(None)
    for size in args.sizes:
        rec = builds[size]
        directory = kv_dir(store)
        kv = kvcache.read(directory, rec["sha256"])
        with tempfile.TemporaryDirectory(dir=root) as scratch:  # a fresh directory, so the file is really written
            write_s = kvcache.write(Path(scratch), kv.state, kv.tokens, {k: v for k, v in kv.meta.items() if k != "format"})[2]
        reads = []
        restores = []
        for _ in range(args.repeat):
            kv = kvcache.read(directory, rec["sha256"])
            reads.append(kv.read_seconds)
            started = time.perf_counter()
            generator.load_state(kv.state, kv.tokens)
            restores.append(time.perf_counter() - started)
        mb = rec["bytes"] / 1e6
        print(f"{size:>6} {rec['n_tokens']:>7} {mb:>7.1f}MB {rec['bytes_per_token']:>8.0f} {rec['build_seconds']:>6.2f}s "
              f"{mb / write_s:>10.0f} {mb / median(reads):>16.0f} {kv.state.nbytes / 1e6 / median(restores):>12.0f}")
    generator.close()

    print("\nwarm (model loaded, in process): time to first token, median of", args.repeat)
    print(f"{'block':>6} {'kv':>8} {'prefill':>8} {'less':>6} {'same answer':>11}")
    for size, row in warm(root, args.sizes, args.repeat).items():
        print(f"{size:>6} {row['kv']:>7.3f}s {row['prefill']:>7.3f}s {1 - row['kv'] / row['prefill']:>6.1%} "
              f"{'yes' if row['answers_equal'] else 'NO':>11}")

    print("\nfresh process (`memos chat Q --json`): time to first token after the model is loaded, and the command's wall time")
    print(f"{'block':>6} {'ttft kv':>8} {'ttft prefill':>12} {'less':>6} {'wall kv':>8} {'wall prefill':>12} "
          f"{'less':>6} {'same answer':>11}")
    for size, row in fresh(root, args.sizes, args.repeat).items():
        print(f"{size:>6} {row['kv_ttft']:>7.3f}s {row['prefill_ttft']:>11.3f}s {1 - row['kv_ttft'] / row['prefill_ttft']:>6.1%} "
              f"{row['kv_wall']:>7.2f}s {row['prefill_wall']:>11.2f}s {1 - row['kv_wall'] / row['prefill_wall']:>6.1%} "
              f"{'yes' if row['answers_equal'] else 'NO':>11}")
    if not args.keep:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
