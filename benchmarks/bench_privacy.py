"""Privacy: detection and false positives on a labelled corpus, import throughput with the guard on,
and `memos scan --history` on a large store.

1. Detection, per kind, on ``data/privacy_corpus.jsonl`` (made by ``privacy_corpus.py`` from
   detect-secrets' own test data, generated secrets of the same formats, ordinary notes and
   LoCoMo turns; see ``data/PRIVACY_CORPUS.md``). Goals: detection >= 0.95, false positives <= 1%.
2. `memos import` of N ordinary notes with the guard on (the default policy) and off
   (``privacy.secrets = "allow"``: no detector runs), in turn, in one run. Goal: >= 300 units/s on.
3. `memos scan --history` on a store of 100k units and 10k commits, built with ``git fast-import``
   (no embedding: scan reads git, not the table), with secrets planted in current units and in
   versions since edited away: every planted one must be found, nothing else.

Usage: python benchmarks/bench_privacy.py [--import-n 5000] [--units 100000] [--commits 10000]
       [--skip-import] [--skip-scan]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import sentences, wall

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "privacy_corpus.jsonl"
MEMOS = [sys.executable, "-m", "memos_cli"]
SECRET = "ghp_{:0>36}"  # a GitHub token's format; one distinct per planted unit


def detection() -> None:
    from memos_cli.privacy.detect import Detector
    from memos_cli.privacy.kinds import NAMES

    if not CORPUS.exists():
        subprocess.run([sys.executable, str(HERE / "privacy_corpus.py")], check=True)
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    detector = Detector(NAMES)
    total, hit, other = Counter(), Counter(), Counter()
    false_pos = Counter()
    clean = 0
    started = time.perf_counter()
    for row in rows:
        kinds = {f.kind for f in detector.find(row["text"])}
        if row["kinds"]:
            kind = row["kinds"][0]
            total[kind] += 1
            hit[kind] += kind in kinds
            other[kind] += bool(kinds - {kind})
        else:
            clean += 1
            for kind in kinds:
                false_pos[kind] += 1
    per_note_ms = (time.perf_counter() - started) / len(rows) * 1000
    flagged_clean = sum(1 for row in rows if not row["kinds"] and detector.find(row["text"]))
    print(f"1. detection on {CORPUS.name}: {sum(total.values())} positives of {len(total)} kinds, {clean} clean notes "
          f"({per_note_ms:.2f} ms a note, every kind on)")
    print(f"   {'kind':<14} {'found':>9} {'rate':>6}  other kind too")
    for kind in NAMES:
        if total[kind]:
            print(f"   {kind:<14} {hit[kind]:>4}/{total[kind]:<4} {hit[kind] / total[kind]:>6.3f}  {other[kind]}")
    secrets = [k for k in total if k not in ("email", "phone", "card", "iban")]
    for label, kinds in (("secrets", secrets), ("personal", [k for k in total if k not in secrets]), ("all", list(total))):
        n, h = sum(total[k] for k in kinds), sum(hit[k] for k in kinds)
        print(f"   {label:<14} {h:>4}/{n:<4} {h / n:>6.3f}")
    print(f"   false positives: {flagged_clean}/{clean} clean notes = {flagged_clean / clean:.2%} "
          f"(by kind: {dict(false_pos) or 'none'})")


def import_throughput(n: int, tmp: Path) -> None:
    notes = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()
             if line.strip() and not json.loads(line)["kinds"]]
    sets = {"bench_import's one-line notes": sentences(n),
            "the corpus's clean notes (LoCoMo turns and notes, longer)": [f"{notes[i % len(notes)]} ({i})" for i in range(n)]}
    wall(MEMOS + ["--store", str(tmp / "warm"), "add", "warm the model cache"])
    print(f"2. memos import of {n} notes (CLI, embeddings included, best of 2, guard on and off alternating; off: "
          "privacy.secrets = allow, no detector runs)")
    for name, texts in sets.items():
        src = tmp / "units.jsonl"
        src.write_text("".join(json.dumps({"text": t, "kind": "note", "meta": {"i": i}}) + "\n" for i, t in enumerate(texts)))
        seconds: dict[str, list[float]] = {"on": [], "off": []}
        for rnd in range(2):
            for mode in ("on", "off"):
                store = tmp / f"import-{mode}-{rnd}"
                shutil.rmtree(store, ignore_errors=True)
                wall(MEMOS + ["--store", str(store), "init"])
                if mode == "off":
                    wall(MEMOS + ["--store", str(store), "config", "set", "privacy.secrets", "allow"])
                seconds[mode].append(wall(MEMOS + ["--store", str(store), "import", str(src)]))
        on, off = min(seconds["on"]), min(seconds["off"])
        print(f"   {name}: guard on {on:.1f}s = {n / on:.0f} units/s; off {off:.1f}s = {n / off:.0f} units/s; "
              f"time ratio on/off {on / off:.3f}")


def build_history_store(root: Path, units: int, commits: int, planted: int) -> tuple[set[str], set[tuple[str, int]]]:
    """A store of ``units`` units over ``commits`` commits, each commit adding its share and every
    tenth editing an older unit. Half the ``planted`` secrets stay in their units; the other half
    are edited away in the next commit. Returns (ids holding one now, (id, version) holding one in history)."""
    from memos_cli.plaintext import files
    from memos_cli.plaintext.units import build_unit

    subprocess.run(MEMOS + ["--store", str(root), "init"], check=True, stdout=subprocess.DEVNULL)
    git = {"cwd": root, "capture_output": True, "text": True, "check": True}
    parent = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
    branch = subprocess.run(["git", "symbolic-ref", "HEAD"], **git).stdout.strip()
    rng = random.Random(5)
    texts = sentences(units)
    chosen = rng.sample(range(units), planted)
    to_edit_away, to_keep = set(chosen[: planted // 2]), set(chosen[planted // 2:])
    now: set[str] = set()
    history: set[tuple[str, int]] = set()
    made = []
    pending = []  # planted units to edit in the next commit
    per = units // commits
    out = bytearray()
    for c in range(commits):
        changed = []
        for unit in pending:
            unit.text, unit.version = texts[rng.randrange(units)], unit.version + 1
            changed.append(unit)
        pending = []
        for i in range(c * per, units if c == commits - 1 else (c + 1) * per):
            secret = i in to_edit_away or i in to_keep
            unit = build_unit(texts[i] + (f" The CI token is {SECRET.format(i)}." if secret else ""))
            if i in to_keep:
                now.add(unit.id)
            elif i in to_edit_away:
                history.add((unit.id, 1))
                pending.append(unit)
            else:
                made.append(unit)
            changed.append(unit)
        if c % 10 == 9 and made:
            old = rng.choice(made)
            old.text, old.version = old.text + " (edited)", old.version + 1
            changed.append(old)
        msg = f"import: {len(changed)} units\n\nMemos-Op: import\n".encode()
        out += f"commit {branch}\ncommitter bench <bench@memos> {1700000000 + c} +0000\n".encode()
        out += b"data %d\n%s" % (len(msg), msg)
        if c == 0:
            out += f"from {parent}\n".encode()
        for unit in changed:
            data = files.dumps(unit)
            out += f"M 100644 inline {files.unit_path(unit.id)}\ndata {len(data)}\n".encode() + data + b"\n"
        out += b"\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=root, input=bytes(out), check=True)
    subprocess.run(["git", "reset", "--hard", "-q"], cwd=root, check=True)
    return now, history


def scan_history(units: int, commits: int, tmp: Path) -> None:
    root = tmp / "history"
    started = time.perf_counter()
    planted_now, planted_history = build_history_store(root, units, commits, planted=40)
    built = time.perf_counter() - started
    n_commits = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    started = time.perf_counter()
    done = subprocess.run(MEMOS + ["--store", str(root), "scan", "--history", "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    report = json.loads(done.stdout)
    found_now = {f["unit"] for f in report["findings"] if f["where"] == "unit"}
    found_history = {(f["unit"], f["version"]) for f in report["findings"] if f["where"] == "history"}
    started = time.perf_counter()
    plain = subprocess.run(MEMOS + ["--store", str(root), "scan", "--json"], capture_output=True, text=True)
    plain_s = time.perf_counter() - started
    print(f"3. memos scan --history: {report['scanned']['units']:,} units, {report['scanned']['versions']:,} versions, "
          f"{n_commits} commits (built in {built:.0f}s): {seconds:.1f}s, exit {done.returncode}; "
          f"found {len(found_now)}/{len(planted_now)} planted in units and {len(found_history)}/{len(planted_history)} "
          f"in history, {len(report['findings']) - len(found_now) - len(found_history)} other findings; "
          f"memos scan (current units only): {plain_s:.1f}s, exit {plain.returncode}")
    assert found_now == planted_now and found_history == planted_history, "scan missed or invented findings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--import-n", type=int, default=5000)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--commits", type=int, default=10_000)
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument("--skip-scan", action="store_true")
    args = ap.parse_args()
    detection()
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-privacy-"))
    try:
        if not args.skip_import:
            import_throughput(args.import_n, tmp)
        if not args.skip_scan:
            scan_history(args.units, args.commits, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
