"""A big ``memos consolidate`` applies its plan in slices: the lock is let go between them, so writers get in;
each slice is one commit of the run, and a kill leaves the store sound."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memos_cli.scheduler import apply as sched
from memos_cli.scheduler.run import consolidate

from .conftest import commit_count, git, head

NO_HEAT = ("consolidate.heat.activation_top", 0)


def planted(store, n: int) -> list[tuple[str, str]]:
    """``n`` originals, each with a near duplicate; returns the (original, duplicate) ids."""
    records = [{"text": f"Reminder {i}: take the blue folder {i} to the office."} for i in range(n)]
    records += [{"text": f"reminder {i}: take the blue folder {i} to the office"} for i in range(n)]
    units = store.import_records(list(enumerate(records, 1)))
    return [(units[i].id, units[n + i].id) for i in range(n)]


def test_a_big_plan_is_applied_in_slices_each_one_commit_of_the_run(store, cli, monkeypatch) -> None:
    store.set_config(*NO_HEAT)
    pairs = planted(store, 12)
    start = head(store.root)
    commits = commit_count(store.root)
    monkeypatch.setattr(sched, "SLICE_FIRST", 4)  # two merges a slice
    monkeypatch.setattr(sched, "SLICE_MIN", 4)
    monkeypatch.setattr(sched, "SLICE_MAX", 4)
    monkeypatch.setattr(sched, "SLICE_PAUSE", 0.0)

    report = consolidate(store)
    assert report.counts()["merge"] == 12
    assert len(report.commits) == 6 and report.commit == report.commits[-1] == head(store.root)
    assert commit_count(store.root) == commits + 6
    trailers = git(store.root, "log", f"{start}..HEAD", "--format=%(trailers:key=Memos-Run,valueonly)").split()
    assert len(trailers) == 6 and len(set(trailers)) == 1  # the slices of one run say so
    subjects = git(store.root, "log", f"{start}..HEAD", "--format=%s").splitlines()
    assert subjects[-1].startswith("consolidate: merged 2 (part 1)") and "(part 6)" in subjects[0]
    for original, duplicate in pairs:
        assert store.get(duplicate).status == "archived" and store.get(duplicate).meta["merged_into"] == original

    assert cli("rollback", start).returncode == 0  # the run undone: to the parent of its first slice
    assert all(store.get(d).status == "active" for _, d in pairs)
    assert cli("check").returncode == 0


@pytest.mark.parametrize("point", ["written", "committed"])
def test_a_consolidate_killed_while_applying_leaves_a_sound_store(store, cli, point) -> None:
    store.set_config(*NO_HEAT)
    pairs = planted(store, 5)
    before = head(store.root)
    killed = cli("consolidate", env={"MEMOS_TEST_KILL_AT": point})
    assert killed.returncode == -9

    checked = cli("check")  # the next command puts the store right, and says what it did
    assert checked.returncode == 0, checked.out + checked.err
    if point == "written":
        assert "recovered from an interrupted consolidate" in checked.err
        assert head(store.root) == before
        assert all(store.get(d).status == "active" for _, d in pairs)
    else:
        assert head(store.root) != before
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""

    again = cli("consolidate", "--json")  # and the next run finishes the job
    assert again.returncode == 0, again.err
    assert all(store.get(d).status == "archived" for _, d in pairs)
    assert json.loads(cli("consolidate", "--json").out)["commit"] is None


WRITER = """
import json, subprocess, sys, time
store, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", store, "add", f"writer note {i}", "--json"],
                          capture_output=True, text=True)
    print(json.dumps({"code": done.returncode, "err": done.stderr.strip()}), flush=True)
"""


@pytest.mark.slow
def test_writers_wait_for_a_slice_not_for_the_whole_run(store, cli, tmp_path) -> None:
    """The lock's own trace shows no writer waiting long, however long the run holds its slices."""
    store.set_config(*NO_HEAT)
    planted(store, 300)
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "MEMOS_LOCK_TIMEOUT"} | {"MEMOS_LOCK_TRACE": str(trace)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), "6"], stdout=subprocess.PIPE,
                              text=True, env=env)
    run = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(store.root), "consolidate", "--json"],
                         capture_output=True, text=True, env=env)
    results = [json.loads(line) for line in writer.communicate(timeout=300)[0].splitlines()]
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["counts"]["merge"] == 300
    assert all(r["code"] == 0 for r in results), results
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    slices = [r for r in records if r["lock"] == "lock" and r["command"] == "memos consolidate"]
    adds = [r for r in records if r["lock"] == "lock" and r["command"] == "memos add"]
    assert len(adds) == 6 and slices
    longest = max(r["held"] for r in slices)
    assert max(r["waited"] for r in adds) <= longest + 1.0  # a writer waits for one slice at most, not the run


def test_slices_are_sized_from_a_fixed_and_a_per_unit_cost() -> None:
    """At 100k units a slice costs about 0.45 s whatever its size, plus about 1 ms a unit: the next
    slice must be sized for the lock time left after the fixed part, not shrunk to the minimum."""
    def cost(n: int) -> float:
        return 0.45 + 0.001 * n

    held: list[tuple[int, float]] = []
    for _ in range(8):
        n = sched._slice_size(held)
        held.append((n, cost(n)))
    assert [n for n, _ in held[:2]] == [sched.SLICE_FIRST, sched.SLICE_FIRST // 2]
    expected = int((sched.SLICE_SECONDS - 0.45) / 0.001)
    assert all(abs(n - expected) <= 2 for n, _ in held[-3:])  # reached by growing half a slice at a time
    assert all(n <= expected + 2 for n, _ in held)
    # a fixed part over the target leaves the smallest slice; a cheap store gets ever bigger ones
    assert sched._slice_size([(200, 1.2), (100, 1.1)]) == sched.SLICE_MIN
    assert sched._slice_size([(200, 0.012), (100, 0.011)]) == 150  # cheap: grows by half a slice each time


def test_only_a_run_that_changed_many_units_compacts_the_table(store, monkeypatch) -> None:
    """Compaction rewrites the whole table: a routine run that merged a pair leaves it to the table's
    own tiered merging; a run that changed many units (here more than 3) compacts."""
    store.set_config(*NO_HEAT)
    monkeypatch.setattr(sched, "COMPACT_CHANGED", 3)
    monkeypatch.setattr(sched, "COMPACT_SHARE", 1.0)  # 3 units whatever the store's size, from 3 up
    store.import_records(list(enumerate([{"text": f"Chapter {i} of the manual covers {w}."} for i, w in
                                         enumerate(["boilers", "trains", "gardens", "taxes", "cameras"])], 1)))

    def pairs(words: list[str]) -> None:
        records = [{"text": f"The {w} folder goes back to the office on Monday."} for w in words]
        records += [{"text": f"the {w} folder goes back to the office on monday"} for w in words]
        store.import_records(list(enumerate(records, 1)))

    pairs(["blue"])
    routine = consolidate(store)
    assert routine.counts()["merge"] == 1 and store.table.fragments() < sched.COMPACT_FRAGMENTS
    assert not [m for m in routine.maintenance if m.startswith("compacted")]
    pairs(["green", "yellow"])
    big = consolidate(store)
    assert big.counts()["merge"] == 2
    assert [m for m in big.maintenance if m.startswith("compacted")]


def test_a_noisy_fit_grows_a_slice_by_half_at_most() -> None:
    """Slices of nearly one size with noisy times fit a per-unit cost near zero: the next slice grows
    by half at most, not to SLICE_MAX (at 100k such a slice held the lock 10.6 s)."""
    held = [(200, 0.80), (100, 0.70), (300, 0.79), (310, 0.80), (305, 0.78), (300, 0.80)]
    assert sched._slice_size(held) <= 450
