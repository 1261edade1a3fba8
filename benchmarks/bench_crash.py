"""Crash safety: SIGKILL `memos import` at random moments; the store must stay sound after each kill.

A fresh store is seeded with one finished import of --units units, which also
times the phases of an import: embedding (before the lock) and writing (while
``.git/memos/journal.json`` exists). Then --runs imports of --units new units
each are killed with SIGKILL: every other kill waits for the journal to appear
and strikes after a random delay within the write phase, the others at a
uniform random moment of a whole import. After every 4 kills one import is left
to finish. After each round the next command (`memos stats --json`) must
succeed, undoing or keeping the cut-off write (and saying so on stderr), and then:

  (a) HEAD is the commit from before the import, or one new "import:" commit
      on top of it whose units are all in the store;
  (b) `git status --porcelain` is empty;
  (c) `memos check --json` exits 0 with "ok": true;
  (d) every unit a finished import reported written is listed;
  (e) the store holds exactly the seeded + finished + committed-before-the-kill units.

A failed round is reported, and the store put right by hand (git reset/clean,
`memos check --repair`) so that the next rounds test a sound store again.
By default the kill hits the whole process group of the command (memos and the
git it may be running); --pid-only kills the memos process alone, leaving a git
child it was running to finish as an orphan.

Usage: python benchmarks/bench_crash.py [--runs 25] [--units 5000] [--seed 1] [--keep DIR] [--pid-only] [-v]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common import sentences

POLL_S = 0.005  # how often the journal is looked for
PHASES = ("embedding", "writing", "after commit")


@dataclass
class Round:
    """One import: killed (mode "write" or "uniform") or left to finish (mode "finish")."""

    n: int
    mode: str
    head_before: str = ""
    phase: str = ""  # embedding, writing, after commit, finished
    journal: bool = False  # the journal existed when the import was killed
    killed_at: float | None = None  # seconds after the start
    after_journal: float | None = None  # seconds after the journal appeared
    head_killed: str = ""  # HEAD once the import was dead
    head_after: str = ""  # HEAD after the next command
    notice: str = ""  # what the next command said on stderr
    new_units: int = 0
    seconds: float = 0.0  # wall time of the round, checks included
    checks_s: float = 0.0  # wall time of the next command and the checks
    failures: list[str] = field(default_factory=list)
    healed: str = ""  # what was done by hand after a failure, so that the next round starts sound

    def describe(self) -> str:
        when = "" if self.killed_at is None else f" killed at {self.killed_at:.3f}s"
        if self.after_journal is not None:
            when += f" ({self.after_journal:.3f}s after the journal appeared)"
        lines = [f"round {self.n} ({self.mode}): phase {self.phase}{when}, journal {'present' if self.journal else 'absent'}, "
                 f"HEAD {self.head_before[:10]} -> {self.head_killed[:10]} -> {self.head_after[:10]}, "
                 f"+{self.new_units} units, {self.seconds:.1f}s ({self.checks_s:.1f}s of checks)"]
        if self.notice:
            lines.append(f"  stderr of the next command: {self.notice}")
        lines += [f"  FAIL: {f}" for f in self.failures]
        if self.healed:
            lines.append(f"  then, for the next round: {self.healed}")
        return "\n".join(lines)


class CrashRig:
    """A store under test, the units it must hold, and imports to kill in it."""

    def __init__(self, store: Path, work: Path, memos: list[str], *, units: int, seed: int = 1,
                 kill_group: bool = True) -> None:
        self.store = store
        self.work = work  # where the input files go
        self.memos_cmd = memos
        self.units = units
        self.rng = random.Random(seed)
        self.kill_group = kill_group
        self.env = {**os.environ}
        self.env.setdefault("MEMOS_USER", "crash")
        self.expected: set[str] = set()  # ids reported written, or committed before a kill
        self.rounds: list[Round] = []
        self.full_s = 0.0  # a whole import of ``units``, as long as the last one that finished
        self.write_s = 0.0  # how long its journal existed
        self.batches = 0

    # ---- running things ------------------------------------------------------

    def memos(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.memos_cmd, "--store", str(self.store), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.store), *args], capture_output=True, text=True, check=True).stdout

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    @property
    def journal(self) -> Path:
        return self.store / ".git" / "memos" / "journal.json"

    def batch(self) -> Path:
        """A JSON-lines file of ``units`` texts no other batch has."""
        self.batches += 1
        path = self.work / f"batch-{self.batches}.jsonl"
        texts = sentences(self.units, seed=self.rng.randrange(2**31))
        path.write_text("".join(json.dumps({"text": f"{t} [batch {self.batches}]"}) + "\n" for t in texts),
                        encoding="utf-8")
        return path

    def start(self, source: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """`memos import SOURCE --json` in a session of its own; output to files (the ids would fill a pipe)."""
        out, err = source.with_suffix(".out"), source.with_suffix(".err")
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen([*self.memos_cmd, "--store", str(self.store), "import", str(source), "--json"],
                                    stdout=stdout, stderr=stderr, env=self.env, start_new_session=True)
        return proc, out, err

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            if self.kill_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    # ---- the rounds ------------------------------------------------------------

    def setup(self) -> Round:
        """`memos init`, then one finished import: the seed, and the timings of the phases."""
        done = self.memos("init")
        if done.returncode != 0:
            raise RuntimeError(f"memos init failed: {done.stderr.strip()}")
        return self.play("finish")

    def play(self, mode: str) -> Round:
        """One round: an import, killed in ``mode`` ("write", "uniform") or left to "finish", then the checks."""
        started = time.perf_counter()
        rnd = Round(n=len(self.rounds), mode=mode, head_before=self.head())
        self.rounds.append(rnd)
        source = self.batch()
        proc, out, err = self.start(source)
        t0 = time.perf_counter()
        appeared: float | None = None
        gone: float | None = None
        deadline: float | None = None
        if mode == "uniform":
            deadline = self.rng.uniform(0, self.full_s)
        while proc.poll() is None:
            now = time.perf_counter() - t0
            there = self.journal.exists()
            if there and appeared is None:
                appeared = now
                if mode == "write":  # in the first 60% of the seed's write phase: a later import's
                    deadline = now + self.rng.uniform(0, 0.6 * self.write_s)  # may write faster
            elif not there and appeared is not None and gone is None:
                gone = now
            if deadline is not None and now >= deadline:
                self.kill(proc)
                rnd.killed_at = time.perf_counter() - t0
                if appeared is not None:
                    rnd.after_journal = rnd.killed_at - appeared
                break
            time.sleep(POLL_S)
        rc = proc.wait()
        rnd.journal = self.journal.exists()
        rnd.head_killed = self.head()
        report = None
        if rc == 0:  # finished, on purpose or before the kill came
            rnd.phase = "finished"
            rnd.killed_at = rnd.after_journal = None
            elapsed = time.perf_counter() - t0
            try:
                report = json.loads(out.read_bytes().splitlines()[-1])
            except (ValueError, IndexError):
                rnd.failures.append(f"the finished import printed no JSON: {out.read_text(errors='replace')[-300:]!r} "
                                    f"{err.read_text(errors='replace')[-300:]!r}")
            if appeared is not None:  # any whole import times the next kills
                self.full_s = elapsed
                self.write_s = (gone if gone is not None else elapsed) - appeared
        elif rc == -signal.SIGKILL and rnd.killed_at is not None:
            if rnd.head_killed != rnd.head_before:
                rnd.phase = "after commit"
            else:
                rnd.phase = "writing" if rnd.journal else "embedding"
        else:
            rnd.phase = "failed"
            rnd.failures.append(f"the import exited {rc} on its own: {err.read_text(errors='replace')[-500:]!r}")
        checks = time.perf_counter()
        self.verify(rnd, report)
        rnd.checks_s = time.perf_counter() - checks
        if rnd.failures:
            rnd.healed = self.heal()
        rnd.seconds = time.perf_counter() - started
        for path in (source, out, err):
            path.unlink(missing_ok=True)
        return rnd

    def heal(self) -> str:
        """After a failed round: put the work tree back to HEAD by hand and let `memos check --repair`
        fix the table, so that the next round tests a sound store again (and does not fail the same way)."""
        self.git("reset", "-q", "--hard", "HEAD")
        self.git("clean", "-fdq")
        done = self.memos("check", "--repair", "--json")
        return f"git reset --hard + git clean -fd, then `memos check --repair` exited {done.returncode}"

    # ---- the checks --------------------------------------------------------------

    def verify(self, rnd: Round, report: dict[str, object] | None) -> None:
        fail = rnd.failures.append
        # The next command: it must run, and put right (and tell of) a cut-off write.
        nxt = self.memos("stats", "--json")
        rnd.notice = " | ".join(line for line in nxt.stderr.splitlines() if line.strip())
        stats: dict[str, object] = {}
        if nxt.returncode != 0:
            fail(f"`memos stats --json` exited {nxt.returncode}: {nxt.stderr.strip()[-500:]}")
        else:
            try:
                stats = json.loads(nxt.stdout)
            except ValueError:
                fail(f"`memos stats --json` printed no JSON: {nxt.stdout[:200]!r}")
        if rnd.journal and not rnd.notice:
            fail("the import left a journal, but the next command said nothing about recovering")
        if not rnd.journal and rnd.notice:
            fail(f"no journal was left, yet the next command said: {rnd.notice}")
        if self.journal.exists():
            fail("the journal is still there after the next command")

        # (a) HEAD: the commit before the import, or one "import:" commit on top of it.
        rnd.head_after = self.head()
        if rnd.head_after != rnd.head_killed:
            fail(f"the next command moved HEAD from {rnd.head_killed[:10]} to {rnd.head_after[:10]}")
        new_ids: set[str] = set()
        if rnd.head_after != rnd.head_before:
            parents = self.git("rev-list", "--parents", "-n", "1", rnd.head_after).split()[1:]
            subject = self.git("log", "-1", "--format=%s", rnd.head_after).strip()
            if parents != [rnd.head_before] or not subject.startswith("import:"):
                fail(f"HEAD {rnd.head_after[:10]} ({subject!r}, parents {[p[:10] for p in parents]}) is neither "
                     f"the commit before the import nor one import on top of it")
            changed = self.git("diff-tree", "-r", "--name-status", "--no-renames", rnd.head_before, rnd.head_after)
            for line in changed.splitlines():
                status, path = line.split("\t", 1)
                if status != "A" or not path.startswith("units/"):
                    fail(f"the import commit has {status} {path}")
                else:
                    new_ids.add(Path(path).stem)
            if len(new_ids) != self.units:
                fail(f"the import commit adds {len(new_ids)} units, not {self.units}")
        elif rnd.phase in ("finished", "after commit"):
            fail("the import finished but HEAD did not move")
        rnd.new_units = len(new_ids)
        if report is not None:
            ids = report.get("ids")
            reported = set(ids) if isinstance(ids, list) else set()
            if report.get("commit") != rnd.head_after:
                fail(f"the import reported commit {str(report.get('commit'))[:10]}, HEAD is {rnd.head_after[:10]}")
            if report.get("imported") != self.units or len(reported) != self.units:
                fail(f"the import reported {report.get('imported')} units and {len(reported)} distinct ids, "
                     f"not {self.units}")
            if reported != new_ids:
                fail(f"{len(reported - new_ids)} reported ids are not in its commit, "
                     f"{len(new_ids - reported)} ids of its commit were not reported")
            new_ids |= reported
        self.expected |= new_ids

        # (b) nothing uncommitted.
        status = self.git("status", "--porcelain")
        if status.strip():
            fail(f"git status is not clean: {status.splitlines()[:5]}")

        # (c) `memos check` passes; (d) and (e) from `memos list`. Both only read: run side by side.
        with ThreadPoolExecutor(2) as pool:
            checking = pool.submit(self.memos, "check", "--json")
            listing = pool.submit(self.memos, "list", "--status", "all", "-n", "0", "--json")
            chk, lst = checking.result(), listing.result()
        try:
            verdict = json.loads(chk.stdout)
        except ValueError:
            verdict = None
        if chk.returncode != 0 or not isinstance(verdict, dict) or verdict.get("ok") is not True:
            problems = verdict.get("problems") if isinstance(verdict, dict) else None
            fail(f"`memos check --json` exited {chk.returncode}: {problems or chk.stdout.strip()[-300:]} "
                 f"{chk.stderr.strip()[-300:]}")

        # (d) every unit reported written is there, (e) and nothing else.
        try:
            listed = [u["id"] for u in json.loads(lst.stdout)]
        except (ValueError, TypeError, KeyError):
            fail(f"`memos list --json` exited {lst.returncode}: {lst.stderr.strip()[-300:]}")
            return
        present = set(listed)
        missing = self.expected - present
        if missing:
            fail(f"{len(missing)} units reported written are missing (e.g. {', '.join(sorted(missing)[:3])})")
        if len(listed) != len(self.expected):
            fail(f"the store lists {len(listed)} units ({len(present)} distinct), expected {len(self.expected)}")
        if stats.get("units") not in (None, len(self.expected)):
            fail(f"`memos stats` counts {stats.get('units')} units, expected {len(self.expected)}")


def summary(rig: CrashRig, seconds: float) -> tuple[str, int]:
    """The printed summary, and the number of failed rounds."""
    rounds = rig.rounds[1:]  # the seed is not a round
    kills = [r for r in rounds if r.killed_at is not None and r.phase in PHASES]
    by_phase = {p: sum(r.phase == p for r in kills) for p in PHASES}
    with_journal = sum(r.journal for r in kills if r.phase == "after commit")
    finished = [r for r in rounds if r.phase == "finished"]
    early = sum(r.mode != "finish" for r in finished)
    failed = [r for r in rig.rounds if r.failures]
    lines = [
        f"rounds: {len(rounds)} imports of {rig.units} units into a store seeded with {rig.units} "
        f"(a whole import {rig.full_s:.1f}s, its write phase {rig.write_s:.2f}s)",
        f"kills: {len(kills)}: embedding {by_phase['embedding']}, writing (journal present) {by_phase['writing']}, "
        f"after commit {by_phase['after commit']} ({with_journal} of them with the journal still present)",
        f"finished imports: {len(finished)} ({early} of them finished before their kill came)",
        f"units at the end: {len(rig.expected)}, commits: {rig.git('rev-list', '--count', 'HEAD').strip()}",
        f"failures: {sum(len(r.failures) for r in failed)} in {len(failed)} rounds"
        + (" (after each, the store was put right by hand before the next round)" if failed else ""),
    ]
    lines += [r.describe() for r in failed]
    lines.append(f"wall time: {seconds:.0f}s")
    return "\n".join(lines), len(failed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="kills (plus one finished import after every 4)")
    ap.add_argument("--units", type=int, default=5000, help="units per import")
    ap.add_argument("--seed", type=int, default=1, help="seed of the texts and of the kill times")
    ap.add_argument("--keep", metavar="DIR", help="build the store here (must not exist) and keep it")
    ap.add_argument("--pid-only", action="store_true", help="kill the memos process alone, not its git children")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every round")
    args = ap.parse_args()
    memos = shutil.which("memos") or str(Path(sys.executable).with_name("memos"))
    if args.keep and Path(args.keep).exists():
        sys.exit(f"{args.keep} exists already")
    work = Path(tempfile.mkdtemp(prefix="memos-bench-crash-"))
    store = Path(args.keep).absolute() if args.keep else work / "store"
    started = time.perf_counter()
    try:
        rig = CrashRig(store, work, [memos], units=args.units, seed=args.seed, kill_group=not args.pid_only)
        # The first command in a fresh model cache converts the model: not in the timings.
        subprocess.run([memos, "--store", str(work / "warm"), "add", "warm the model cache"], check=True,
                       stdout=subprocess.DEVNULL, env=rig.env)
        seed = rig.setup()
        if seed.failures or not rig.write_s:
            sys.exit(f"the seed import failed:\n{seed.describe()}")
        # --runs kills, alternately aimed at the write phase and at a uniform moment, with a finished
        # import after every 4; an import that finishes before its kill comes is no kill, and is played again.
        kills = tries = 0
        while kills < args.runs and tries < 2 * args.runs:
            rnd = rig.play("write" if tries % 2 == 0 else "uniform")
            tries += 1
            kills += rnd.killed_at is not None
            if rnd.killed_at is not None and kills % 4 == 0:
                rig.play("finish")
            if args.verbose or rnd.failures:
                print(rnd.describe(), flush=True)
        text, failed = summary(rig, time.perf_counter() - started)
        print(text)
        if args.keep:
            print(f"store kept in {store}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
