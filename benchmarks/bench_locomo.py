"""LoCoMo evidence recall: memos with and without context, and plain-LanceDB baselines.

On the development split in ../shared/eval (three conversations, 1,451 turns,
383 questions of categories 1-4), with that evaluation's own turns, questions
and scoring (``locomo_recall.py``: a result counts for a turn when its meta, or
one of its sources, has the turn's ``dia_id``):

- memos through the CLI, as ``locomo_recall.py`` drives it: a fresh store per
  conversation, ``memos import``, then ``memos recall --batch --json``, once
  with the default (context on) and once with ``--no-context``;
- plain LanceDB over the same turns, one table per conversation, with memos's
  embedding model (all-MiniLM-L6-v2, the same vectors) and LanceDB's defaults:
  BM25 alone (``create_index("text", config=FTS())``), dense alone (cosine), and
  LanceDB's default hybrid query (both, fused by its default reranker).

It prints R@1/5/10/20 and C@10 (the mean characters of text in the top 10
results: recall is judged with what it costs to read) for each, then the
README's row. ``locomo_recall.py --memos .venv/bin/memos`` gives the first
figure (and the no-match AUROC) on its own.

Usage: python benchmarks/bench_locomo.py [--eval ../shared/eval] [--conv conv-26 ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def load_eval(folder: Path) -> ModuleType:
    path = folder / "locomo_recall.py"
    if not path.is_file():
        sys.exit(f"no {path}: pass --eval, the folder of the LoCoMo evaluation")
    spec = importlib.util.spec_from_file_location("locomo_recall", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(lr: ModuleType, questions: list[dict], ranked: list[list[dict]]) -> list[dict[Any, float]]:
    """Per question: the share of its evidence turns in the top k (for each k of the evaluation), and C@10."""
    rows = []
    for q, results in zip(questions, ranked, strict=True):
        wanted = lr.evidence_ids(q)
        found = [lr.result_ids(r) for r in results]
        row: dict[Any, float] = {"chars": sum(len(r.get("text") or "") for r in results[:10])}
        for k in lr.KS:
            row[k] = len(wanted & set().union(*found[:k])) / len(wanted)
        rows.append(row)
    return rows


def memos_cli(lr: ModuleType, units: list[dict], questions: list[dict], work: Path) -> dict[str, list[list[dict]]]:
    memos = [sys.executable, "-m", "memos_cli", "--store", str(work / "store")]
    (work / "units.jsonl").write_text("".join(json.dumps(u) + "\n" for u in units))
    (work / "queries.jsonl").write_text(
        "".join(json.dumps({"query": q["question"], "k": max(lr.KS)}) + "\n" for q in questions))
    subprocess.run(memos + ["import", str(work / "units.jsonl")], check=True, capture_output=True)
    out = {}
    for name, flags in (("memos (context on, the default)", []), ("memos --no-context", ["--no-context"])):
        done = subprocess.run(memos + ["recall", "--batch", str(work / "queries.jsonl"), "--json", *flags],
                              check=True, capture_output=True, text=True)
        answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert len(answers) == len(questions), f"{len(questions)} queries but {len(answers)} answers"
        out[name] = [a.get("results", []) for a in answers]
    return out


def lancedb_baselines(lr: ModuleType, embedder: Any, units: list[dict], questions: list[dict],
                      work: Path) -> dict[str, list[list[dict]]]:
    import lancedb
    from lancedb.index import FTS

    vectors = embedder.embed([u["text"] for u in units])
    table = lancedb.connect(str(work / "lancedb")).create_table("turns", data=[
        {"text": u["text"], "dia_id": u["meta"]["dia_id"], "vector": v.tolist()}
        for u, v in zip(units, vectors, strict=True)])
    table.create_index("text", config=FTS())  # LanceDB's default full-text index
    k = max(lr.KS)

    def results(rows: list[dict]) -> list[dict]:
        return [{"text": r["text"], "meta": {"dia_id": r["dia_id"]}} for r in rows]

    out: dict[str, list[list[dict]]] = {"LanceDB BM25": [], "LanceDB dense (cosine)": [], "LanceDB default hybrid": []}
    for q in questions:
        query = q["question"]
        vec = embedder.embed_query(query)
        out["LanceDB BM25"].append(results(table.search(query, query_type="fts").limit(k).to_list()))
        out["LanceDB dense (cosine)"].append(
            results(table.search(vec, vector_column_name="vector").distance_type("cosine").limit(k).to_list()))
        out["LanceDB default hybrid"].append(results(
            table.search(query_type="hybrid", vector_column_name="vector").vector(vec).text(query).limit(k).to_list()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval",
                    help="the folder of locomo_recall.py and data/locomo_dev.json")
    ap.add_argument("--conv", nargs="*", help="sample ids to run (default: all in the file)")
    args = ap.parse_args()
    lr = load_eval(args.eval)
    samples = json.loads((args.eval / "data" / "locomo_dev.json").read_text())
    if args.conv:
        samples = [s for s in samples if s["sample_id"] in args.conv]

    from memos_cli.models.embedder import default_embedder

    embedder = default_embedder()
    scored: dict[str, list[dict[Any, float]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-locomo-"))
    try:
        for sample in samples:
            units, questions = lr.turns(sample["conversation"]), lr.answerable(sample)
            work = tmp / sample["sample_id"]
            work.mkdir()
            started = time.perf_counter()
            ranked = memos_cli(lr, units, questions, work)
            ranked.update(lancedb_baselines(lr, embedder, units, questions, work))
            for name, lists in ranked.items():
                scored.setdefault(name, []).extend(score(lr, questions, lists))
            print(f"{sample['sample_id']}: {len(units)} turns, {len(questions)} questions, "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(rows: list[dict[Any, float]], key: Any) -> float:
        return sum(r[key] for r in rows) / len(rows)

    print(f"\n{'':<32} {'n':>4} " + " ".join(f"{'R@' + str(k):>6}" for k in lr.KS) + f" {'C@10':>6}")
    for name, rows in scored.items():
        print(f"{name:<32} {len(rows):>4} " + " ".join(f"{mean(rows, k):>6.3f}" for k in lr.KS)
              + f" {mean(rows, 'chars'):>6.0f}")
    r = {name: (mean(rows, 10), mean(rows, "chars")) for name, rows in scored.items()}
    on, off = r["memos (context on, the default)"], r["memos --no-context"]
    print(f"\nREADME: {on[0]:.3f} at {on[1]:,.0f} chars with context; {off[0]:.3f} at {off[1]:,.0f} without "
          f"(LanceDB's default hybrid: {r['LanceDB default hybrid'][0]:.3f}; "
          f"BM25: {r['LanceDB BM25'][0]:.3f} at {r['LanceDB BM25'][1]:,.0f}; "
          f"dense: {r['LanceDB dense (cosine)'][0]:.3f})")


if __name__ == "__main__":
    main()
