"""`memos import` throughput, embeddings included (target: at least 300 units/s on 2 cores).

Usage: python benchmarks/bench_import.py [--n 5000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import sentences, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-import-"))
    try:
        src = tmp / "units.jsonl"
        src.write_text("".join(json.dumps({"text": t, "kind": "episode", "tags": ["bench"], "meta": {"i": i}}) + "\n"
                               for i, t in enumerate(sentences(args.n))))
        memos = [sys.executable, "-m", "memos_cli"]
        wall(memos + ["--store", str(tmp / "warm"), "add", "warm the model cache"])
        seconds = wall(memos + ["--store", str(tmp / "store"), "import", str(src)])
        print(f"memos import of {args.n} units (CLI, cold process, embeddings included): "
              f"{seconds:.1f}s = {args.n / seconds:.0f} units/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
