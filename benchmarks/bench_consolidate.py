"""`memos consolidate` at scale: 100k units of which 10% are planted near duplicates.

Builds a store of --n units: 90% originals taken from a store built by
bench_recall.py (their texts and MiniLM vectors; default /tmp/memos-100k-v2),
and 10% planted duplicates of random originals, written the way people repeat
themselves (bench_dedupe.variant: lower case without the full stop, a filler
word, or "Note:" before it) and embedded with the store's model. The units are
facts, so the superseded-facts rule reads them all too. Then it runs
`memos consolidate --json` twice, each in its own process:

- the first run: wall time, the phases' times, the process's peak RSS, and
  the precision/recall of the merges against the planted pairs; meanwhile a
  writer runs `memos add` after `memos add` (each its own process, default
  lock timeout, cube "writer"), and the lock's trace gives its longest wait
  and the run's longest hold;
- the second run, right after: it must make no commit (the writer's notes,
  new and so hot, may be promoted into activation memory);
- a routine run: after four single `memos add`s (one of them a repeat of an
  old unit, written as people repeat themselves), `memos consolidate --json`
  again: its wall time and phases, whether it was incremental, and whether it
  merged the repeat into the old unit; then the same again beside the writer,
  for its longest wait.

Usage: python benchmarks/bench_consolidate.py [--source /tmp/memos-100k-v2] [--n 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedupe import plant  # noqa: E402


def build(root: Path, source: Path, n: int, share: float) -> tuple[set[tuple[str, str]], float]:
    """The store, and the planted (original, duplicate) pairs."""
    import lance

    from memos_cli.models.embedder import default_embedder
    from memos_cli.plaintext.units import build_unit
    from memos_cli.store.store import MemoryStore

    n_orig = int(n * (1 - share))
    n_dup = n - n_orig
    table = lance.dataset(str(source / "tables" / "units.lance")).to_table(columns=["text", "vector"], limit=n_orig)
    if table.num_rows < n_orig:
        sys.exit(f"{source} has {table.num_rows} units; build one with: python benchmarks/bench_recall.py --keep DIR")
    texts = table.column("text").to_pylist()
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    picks, planted = plant(texts, n_dup)
    started = time.perf_counter()
    embedder = default_embedder()
    planted_vectors = embedder.embed(planted)
    print(f"embedded {n_dup} planted duplicates in {time.perf_counter() - started:.1f}s")

    store = MemoryStore(root, embedder=embedder)
    store.init()
    units = [build_unit(t, kind="fact") for t in texts] + [build_unit(t, kind="fact") for t in planted]  # ids in order
    for unit, vec in zip(units, [*vectors, *planted_vectors], strict=True):
        unit.vector, unit.model = vec.tolist(), embedder.model_id
    started = time.perf_counter()
    with store.transaction("import", cube="default") as txn:
        store.save(txn, units, new=True)
        txn.ids = [u.id for u in units]
    built = time.perf_counter() - started
    truth = {(units[i].id, units[n_orig + k].id) for k, i in enumerate(picks)}
    return truth, built


# `memos` itself, reporting its own peak RSS on stderr as it exits: VmHWM, which starts afresh at
# exec (ru_maxrss does not: a child forked from this big process would report this one's size).
SELF_PEAK = ("import atexit, re, runpy, sys; atexit.register(lambda: print('peak-rss-kib', re.search("
             "r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)); "
             "sys.argv[0] = 'memos'; runpy.run_module('memos_cli', run_name='__main__')")


class Writer:
    """A script adding one note after another (`memos add`, each its own process, with the default lock
    timeout) while a consolidate runs: the longest any of them waited for the store's lock, read from
    the lock's trace ($MEMOS_LOCK_TRACE), and whether every add landed."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.trace = root.parent / f"locks-{name}.jsonl"
        self.trace.unlink(missing_ok=True)
        self.codes: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        env = {**os.environ, "MEMOS_LOCK_TRACE": str(self.trace)}
        while not self._stop.is_set():
            text = f"Writer note {len(self.codes)} during the {self.name} run: the plumber comes at {len(self.codes) % 12 + 1}."
            done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(self.root), "add", text,
                                   "--cube", "writer"], capture_output=True, text=True, env=env)
            self.codes.append(done.returncode)
            if done.returncode:
                self.errors.append(done.stderr.strip()[:200])

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        lines = [json.loads(line) for line in self.trace.read_text().splitlines()] if self.trace.exists() else []
        adds = [x for x in lines if x["command"] == "memos add"]
        runs = [x for x in lines if x["command"] != "memos add" and x["lock"] == "lock"]  # not its run lock
        waited = max((x["waited"] for x in adds), default=float("nan"))
        held = max((x["held"] for x in runs), default=float("nan"))
        failed = sum(1 for c in self.codes if c)
        text = (f"  a writer meanwhile: {len(self.codes)} adds, {failed} failed; longest wait for the lock "
                f"{waited:.2f}s; the run held it {len(runs)} times, longest {held:.2f}s")
        return text + "".join(f"\n    failed: {e}" for e in self.errors[:3])


def run(root: Path, name: str, writer: Writer | None = None) -> tuple[dict, float, float]:
    """`memos consolidate --json` in a child: its report, wall seconds and peak RSS (MiB). The report is
    also kept next to the store, as ``consolidate-NAME.json``. With ``writer``, the child records its
    lock holds in the writer's trace."""
    started = time.perf_counter()
    env = {**os.environ, **({"MEMOS_LOCK_TRACE": str(writer.trace)} if writer else {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", SELF_PEAK, "--store", str(root), "consolidate", "--json"],
                                 stdout=out, stderr=err, text=True, env=env)
        _, status, _ = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"consolidate failed ({os.waitstatus_to_exitcode(status)}): {err.read().strip()}")
        data, data_err = out.read(), err.read()
    own = [line for line in data_err.splitlines() if line.startswith("peak-rss-kib ")]
    rss = int(own[-1].split()[1]) / 1024 if own else float("nan")
    (root.parent / f"consolidate-{name}.json").write_text(data)
    return json.loads(data), wall, rss


ROUTINE_ADDS = ("The boiler service is booked for Tuesday at 9am.",
                "Ask Sam whether the train tickets to Porto are refundable.",
                "The spare key for the bike lock is in the kitchen drawer.")


def routine(root: Path, truth: set[tuple[str, str]], with_writer: bool) -> None:
    """Four single adds, one a repeat of an old unit of the default cube (not a writer's note) that no
    planted pair involves, then a run (beside a writer, ``with_writer``: its processes take CPU from the
    run, so the run's own time is measured without one)."""
    import lance

    involved = {i for pair in truth for i in pair}
    rows = lance.dataset(str(root / "tables" / "units.lance")).to_table(
        columns=["id", "text"], filter="status = 'active' AND cube = 'default'", limit=2000).to_pylist()
    old = next(r for r in rows if r["id"] not in involved)
    texts = [*ROUTINE_ADDS[:2], f"Note: {old['text']}", ROUTINE_ADDS[2]]
    added, walls = [], []
    for text in texts:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(root), "add", text, "--json"],
                              capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            sys.exit(f"memos add failed: {done.stderr.strip()}")
        added.append(json.loads(done.stdout)["id"])
    name = "routine-writer" if with_writer else "routine"
    writer = Writer(root, name)
    if with_writer:
        with writer:
            report, wall, rss = run(root, name, writer)
    else:
        report, wall, rss = run(root, name)
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in report["timings"].items())
    merged = [a["units"] for a in report["actions"] if a["action"] == "merge" and a["status"] == "done"]
    scope = report.get("scope", {}).get("default", {})
    print(f"{name} run (after {len(texts)} single adds of {min(walls):.1f}-{max(walls):.1f}s, one a repeat of "
          f"{old['id'][:10]}): {wall:.2f}s wall (its own {report['seconds']:.2f}s: {phases}); peak RSS {rss:.0f} MiB")
    print(f"  mode {report.get('mode')} ({json.dumps(scope)}); {report['summary']}; commit "
          f"{report['commit'] and report['commit'][:10]}; the repeat merged into the old unit: "
          f"{[old['id'], added[2]] in merged}")
    if with_writer:
        print(writer.summary())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="/tmp/memos-100k-v2", type=Path)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--share", type=float, default=0.10, help="fraction of the units that are planted duplicates")
    ap.add_argument("--keep", type=Path, help="build the store here and keep it (default: a temporary directory)")
    args = ap.parse_args()

    where = args.keep or Path(tempfile.mkdtemp(prefix="memos-consolidate-")) / "store"
    if where.exists():
        shutil.rmtree(where)
    truth, built = build(where, args.source, args.n, args.share)
    print(f"built {args.n} units ({len(truth)} planted duplicates) in one import commit: {built:.1f}s")

    with Writer(where, "first") as writer:
        report, wall, rss = run(where, "first", writer)
    found = {(a["units"][0], dup) for a in report["actions"] if a["action"] == "merge" and a["status"] == "done"
             for dup in a["units"][1:]}
    hit = len(found & truth)
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings"].items())
    print(f"first run: {wall:.1f}s wall (its own {report['seconds']:.1f}s: {phases}); peak RSS {rss:.0f} MiB")
    print(f"  {report['summary']}; commit {report['commit'] and report['commit'][:10]}")
    print(f"  merges: pairs {len(found)}, planted {len(truth)}, both {hit}: precision {hit / max(1, len(found)):.4f}, "
          f"recall {hit / len(truth):.4f}")
    print(writer.summary())
    for a in [a for a in report["actions"] if a["status"] == "skipped"][:5]:
        print(f"  skipped: {a['action']} {' '.join(a['units'])}: {a.get('note', '')}")
    second, wall2, rss2 = run(where, "second")
    print(f"second run: {wall2:.1f}s wall, peak RSS {rss2:.0f} MiB: {second['summary']}, commit {second['commit']}, "
          f"mode {second.get('mode')}")
    routine(where, truth, with_writer=False)
    routine(where, truth, with_writer=True)
    if args.keep is None:
        shutil.rmtree(where.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
