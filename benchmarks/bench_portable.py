"""Portable memory at 100k units: export, re-import, and sync between two machines.

1. export a store of --n units (default 100k) as JSON lines, JSON lines with
   vectors, a pack and Markdown, and re-import the pack and the JSON lines
   with vectors into empty stores: each timed, and the round trip checked
   exact (the units' tree at HEAD, byte for byte: the same git tree id);
2. `memos sync` with nothing to do, on that store and a bare remote (target:
   at most 1 s);
3. 1,000 units changed on each of two machines, 50 of them on both (their
   texts, so 50 conflicts): the sync that merges, timed, and everything
   counted afterwards: no change lost, 50 conflicts reported, `memos check`
   clean on both, both at the same commit as the remote.

The store is built by importing a pack whose vectors are random unit
vectors of the embedding model's width (embedding 100k texts on 2 cores
would take about ten minutes and is not what is measured here; the edits
of part 3 are embedded for real).

Usage: python benchmarks/bench_portable.py [--n 100000] [--changes 1000] [--conflicts 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from common import median, sentences, wall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEMOS = [sys.executable, "-m", "memos_cli"]


def run(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(MEMOS + ["--store", str(store), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memos {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def timed_run(store: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = run(store, *args)
    return time.perf_counter() - start, done


def tree(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD:units"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def source_pack(path: Path, n: int) -> None:
    import numpy as np

    from memos_cli.models.embedder import Embedder
    from memos_cli.models.registry import default_embedding_model_path
    from memos_cli.plaintext.units import build_unit
    from memos_cli.portable import pack

    model = Embedder(default_embedding_model_path())
    rng = np.random.default_rng(3)
    units = []
    for i, text in enumerate(sentences(n)):
        unit = build_unit(text, kind="episode" if i % 3 else "fact", tags=[f"t{i % 50}"], meta={"i": i},
                          time=f"2024-01-{1 + i % 28:02d}T10:00:00Z", cube="default" if i % 10 else "work")
        vec = rng.standard_normal(model.dim).astype("float32")
        unit.vector, unit.model = (vec / np.linalg.norm(vec)).tolist(), model.model_id
        units.append(unit)
    pack.write(path, units, cube=None, model=model.model_id, vectors=True, parametric=[])


def part1(tmp: Path, n: int) -> Path:
    src = tmp / "source.pack"
    started = time.perf_counter()
    source_pack(src, n)
    print(f"   (the source pack of {n:,} units with random vectors: {time.perf_counter() - started:.0f}s, "
          f"{src.stat().st_size / 2**20:.0f} MiB)", flush=True)
    a = tmp / "a"
    seconds, _ = timed_run(a, "import", str(src))
    print(f"1. import of a {n:,}-unit pack into an empty store: {seconds:.1f}s ({n / seconds:,.0f} units/s)", flush=True)
    exports = {}
    for label, args in (("jsonl", ["-o", str(tmp / "a.jsonl")]),
                        ("jsonl --vectors", ["--vectors", "-o", str(tmp / "av.jsonl")]),
                        ("pack", ["--format", "pack", "-o", str(tmp / "a.pack")]),
                        ("markdown", ["--format", "markdown", "-o", str(tmp / "md")])):
        seconds, done = timed_run(a, "export", *args, "--json")
        info = json.loads(done.stdout)
        exports[label] = seconds
        print(f"   export {label}: {seconds:.1f}s, {info['units']:,} units, {info['bytes'] / 2**20:.0f} MiB", flush=True)
    for label, src_path, dest in (("pack", tmp / "a.pack", tmp / "b"), ("jsonl --vectors", tmp / "av.jsonl", tmp / "c")):
        seconds, done = timed_run(dest, "import", str(src_path), "--json")
        info = json.loads(done.stdout)
        exact = tree(dest) == tree(a)
        print(f"   re-import {label} into an empty store: {seconds:.1f}s ({info['added']:,} units, "
              f"{n / seconds:,.0f} units/s); round trip exact (same units tree {tree(a)[:10]}): {exact}", flush=True)
        shutil.rmtree(dest)
    return a


def edit(root: Path, ids: list[str], tag: str) -> set[str]:
    """Change these units' texts, in one commit (an import of newer versions, merged by id)."""
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    units = store.get_many(ids)
    later = [replace(u, text=f"{u.text} [{tag} edit]", version=u.version + 1, vector=None, model="",
                     updated_at=u.updated_at + timedelta(seconds=1 if tag == "desk" else 2)) for u in units]
    store.import_units(later)
    return {u.id for u in later}


def part23(tmp: Path, a: Path, changes: int, conflicts: int) -> None:
    remote = tmp / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(a), str(remote)], check=True)
    run(a, "remote", "add", "origin", str(remote))
    run(a, "sync")
    laptop = tmp / "laptop"
    shutil.copytree(a, laptop, symlinks=True)  # a second machine, its search table already built
    noop = [wall(MEMOS + ["--store", str(a), "sync"]) for _ in range(5)]
    print(f"2. memos sync with nothing to do: median {median(noop):.2f}s of 5 (min {min(noop):.2f}s)", flush=True)

    run(a, "export", "-o", str(tmp / "ids.jsonl"))
    all_ids = [json.loads(line)["id"] for line in (tmp / "ids.jsonl").read_text().splitlines()[1:]]
    step = len(all_ids) // (2 * changes)
    desk_ids = all_ids[0:changes * step:step][:changes]
    laptop_ids = desk_ids[:conflicts] + all_ids[1 + changes * step::step][:changes - conflicts]
    started = time.perf_counter()
    edit(a, desk_ids, "desk")
    edit(laptop, laptop_ids, "laptop")
    print(f"3. {changes:,} units changed on each machine, {conflicts} on both ({time.perf_counter() - started:.0f}s "
          "to make, embedding included)", flush=True)
    push_s, _ = timed_run(a, "sync", "--json")
    merge_s, done = timed_run(laptop, "sync", "--json")
    report = json.loads(done.stdout)
    ff_s, done = timed_run(a, "sync", "--json")
    ff = json.loads(done.stdout)
    print(f"   desk pushes: {push_s:.1f}s; laptop merges and pushes: {merge_s:.1f}s ({report['action']}, "
          f"{len(report['taken'])} taken, {len(report['merged'])} merged, {len(report['conflicts'])} conflicts); "
          f"desk takes the merge: {ff_s:.1f}s ({ff['action']})", flush=True)
    from memos_cli.store.store import MemoryStore

    lost = 0
    for root in (a, laptop):
        units = {u.id: u for u in MemoryStore(root).get_many(desk_ids + laptop_ids)}
        for uid in set(desk_ids) - set(laptop_ids[:conflicts]):
            lost += not units[uid].text.endswith("[desk edit]")
        for uid in laptop_ids:  # the laptop's edits are the later ones: they win the conflicts
            lost += not units[uid].text.endswith("[laptop edit]")
    heads = {subprocess.run(["git", "rev-parse", ref], cwd=cwd, capture_output=True, text=True).stdout.strip()
             for cwd, ref in ((a, "HEAD"), (laptop, "HEAD"), (remote, "main"))}
    checks = [subprocess.run(MEMOS + ["--store", str(r), "check"], capture_output=True).returncode for r in (a, laptop)]
    print(f"   afterwards: {lost} changes lost of {2 * changes}; conflicts reported {len(report['conflicts'])} "
          f"(expected {conflicts}); both machines and the remote at one commit: {len(heads) == 1}; "
          f"memos check exit codes {checks}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--conflicts", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-portable-"))
    try:
        a = part1(tmp, args.n)
        part23(tmp, a, args.changes, args.conflicts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
