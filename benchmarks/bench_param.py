"""Parametric memory: learning personal facts into a LoRA adapter, and answering from it.

On ../shared/eval/param/dev.jsonl (or --data; 50 facts with a question, its
answer and a paraphrase, and 30 unrelated questions), through the CLI only:

1. `memos import` the facts as units (kind fact, meta question/answer);
2. `memos learn facts --kind fact --json`: wall time and peak RSS of the
   process (from the kernel's accounting of the child). With --cold, the
   per-machine caches learning keeps (the model's tensor index, the general
   questions' answers) are removed first, so the figure is a first run's;
3. `memos chat --batch --no-recall --temperature 0 --no-save` on every
   question, paraphrase and unrelated question, once with memos's routing
   (the enabled adapter) and once with --no-param: trained and paraphrased
   questions answered (the answer contains the fact's answer), unrelated
   answers unchanged, and leaks (an unrelated answer that, with the adapter,
   holds a fact's answer that it did not hold without);
4. in one process: loading the adapter into llama.cpp, switching it on and
   off (median of 1,000), and scale 0 against no adapter (same tokens).

Usage: python benchmarks/bench_param.py [--data FILE] [--keep DIR] [--cold] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "param" / "dev.jsonl"


def memos(store: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(store), *args], input=stdin,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"memos {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def contains(answer: str, wanted: str) -> bool:
    return wanted.lower() in answer.lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--keep", type=Path, help="build the store here and keep it")
    parser.add_argument("--cold", action="store_true", help="remove learning's per-machine caches first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    facts, unrelated = [], []
    for line in args.data.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            (unrelated.append(item["unrelated"]) if "unrelated" in item else facts.append(item))
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-param-"))
    store = root / "store"
    if store.exists():
        shutil.rmtree(store)
    if args.cold:
        from memos_cli.models.registry import cache_dir

        for old in (cache_dir() / "params").glob("*"):
            old.unlink()

    units = "\n".join(json.dumps({"text": f["text"], "kind": "fact",
                                  "meta": {"question": f["question"], "answer": f["answer"]}}) for f in facts)
    memos(store, "import", "-", stdin=units)

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    learned = json.loads(memos(store, "learn", "facts", "--kind", "fact", "--json").stdout)
    learn_s = time.perf_counter() - started
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024

    questions = [f["question"] for f in facts] + [f["paraphrase"] for f in facts] + unrelated
    batch = "\n".join(json.dumps({"q": q}) for q in questions)
    ask = ("chat", "--batch", "-", "--no-recall", "--temperature", "0", "--no-save", "--max-tokens", "32")
    routed = [json.loads(x) for x in memos(store, *ask, stdin=batch).stdout.splitlines()]
    base = [json.loads(x) for x in memos(store, *ask, "--no-param", stdin=batch).stdout.splitlines()]
    n = len(facts)

    def applied(turn: dict) -> bool:
        return any(p.get("applied") for p in turn["parametric"])

    trained = sum(contains(t["answer"], f["answer"]) for t, f in zip(routed[:n], facts, strict=True))
    trained_base = sum(contains(t["answer"], f["answer"]) for t, f in zip(base[:n], facts, strict=True))
    para = sum(contains(t["answer"], f["answer"]) for t, f in zip(routed[n:2 * n], facts, strict=True))
    para_base = sum(contains(t["answer"], f["answer"]) for t, f in zip(base[n:2 * n], facts, strict=True))
    unchanged = sum(r["answer"] == b["answer"] for r, b in zip(routed[2 * n:], base[2 * n:], strict=True))
    leaks = sum(any(contains(r["answer"], f["answer"]) and not contains(b["answer"], f["answer"]) for f in facts)
                for r, b in zip(routed[2 * n:], base[2 * n:], strict=True))
    routing = {"trained": sum(map(applied, routed[:n])), "paraphrases": sum(map(applied, routed[n:2 * n])),
               "unrelated": sum(map(applied, routed[2 * n:]))}
    route_ms = sorted(t["timings"].get("route_s", 0.0) * 1000 for t in routed[1:])

    switch = apply_figures(store)
    figures = {
        "facts": n, "unrelated": len(unrelated),
        "trained": trained, "trained_base": trained_base, "paraphrases": para, "paraphrases_base": para_base,
        "unrelated_unchanged": unchanged, "leaks": leaks, "routed": routing,
        "route_ms_median": round(route_ms[len(route_ms) // 2], 2) if route_ms else None,
        "learn_s": round(learn_s, 1), "learn_peak_rss_mb": round(peak_mb), "learn_report": learned["report"],
        "blob_bytes": learned["bytes"], **switch,
    }
    print(f"facts {n}, unrelated questions {len(unrelated)}  (Gemma 3 270M, {os.cpu_count()} cores)")
    print(f"trained questions answered     {trained}/{n}  (base {trained_base}/{n})")
    print(f"paraphrases answered           {para}/{n}  (base {para_base}/{n})")
    print(f"unrelated answers unchanged    {unchanged}/{len(unrelated)}   leaks {leaks}")
    print(f"routed to the adapter          trained {routing['trained']}/{n}, paraphrases "
          f"{routing['paraphrases']}/{n}, unrelated {routing['unrelated']}/{len(unrelated)}")
    print(f"learning                       {learn_s:.1f} s wall, peak RSS {peak_mb:.0f} MB"
          f"{' (cold caches)' if args.cold else ''}; stages {learned['report']['seconds']}")
    print(f"adapter                        {learned['bytes'] / 1e6:.2f} MB; load {switch['load_ms']:.2f} ms, "
          f"switch {switch['switch_us']:.1f} us (median), routing {figures['route_ms_median']} ms per turn")
    print(f"scale 0 gives the tokens of no adapter: {switch['scale0_same']}")
    if args.json:
        print(json.dumps(figures, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def apply_figures(store: Path) -> dict:
    """Load the adapter, switch it per request, and compare scale 0 with no adapter, in one process."""
    import statistics

    from memos_cli.models.generator import load_generator
    from memos_cli.parametric.learn import Teacher
    from memos_cli.store import params
    from memos_cli.store.store import MemoryStore

    s = MemoryStore(store)
    record = params.get(s, "facts")
    tensors, meta = params.decode_blob(params.read_blob(s, record))
    with load_generator(None, n_ctx=1024) as gen:
        started = time.perf_counter()
        adapter = gen.load_lora(tensors, float(meta["alpha"]), "facts")
        load_ms = (time.perf_counter() - started) * 1000
        times = []
        for i in range(1000):
            started = time.perf_counter()
            gen.use_loras([(adapter, 1.0)] if i % 2 else [])
            times.append(time.perf_counter() - started)
        prompt = Teacher(gen).question("What is the capital of Germany?")
        gen.use_loras([])
        plain = "".join(gen.stream(prompt, temperature=0.0, max_tokens=24))
        gen.use_loras([(adapter, 0.0)])
        zero = "".join(gen.stream(prompt, temperature=0.0, max_tokens=24))
    return {"load_ms": load_ms, "switch_us": statistics.median(times) * 1e6, "scale0_same": plain == zero}


if __name__ == "__main__":
    main()
