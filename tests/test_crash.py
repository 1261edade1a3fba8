"""Crash safety: `memos import` killed with SIGKILL, mostly while it writes; the store stays sound.

A small version of ``benchmarks/bench_crash.py`` (whose ``CrashRig`` runs the
imports, the kills and the checks (a)-(e) described there).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import Runner, commit_count, git, head

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
UNITS = 600
KILLS = 8
MODES = ["write", "uniform", "write", "write"]  # 3 of 4 kills aimed at the write phase


@pytest.fixture
def bench_crash(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import their ``common``
    return importlib.import_module("bench_crash")


@pytest.mark.slow
def test_import_killed_at_random_moments_leaves_a_sound_store(bench_crash: ModuleType, cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    rig = bench_crash.CrashRig(root, tmp_path, [sys.executable, "-m", "memos_cli"], units=UNITS, seed=5)
    seed = rig.setup()
    assert not seed.failures, seed.describe()
    assert rig.write_s > 0, "the seed import's write phase was not seen"

    kills: list[Any] = []
    for n in range(2 * KILLS):  # an import that finishes before its kill comes is no kill: play another
        if len(kills) == KILLS:
            break
        rnd = rig.play(MODES[n % len(MODES)])
        print(rnd.describe())  # shown with -s
        assert not rnd.failures, rnd.describe()
        if rnd.killed_at is not None:
            kills.append(rnd)
    summary = "\n".join(r.describe() for r in rig.rounds)
    assert len(kills) == KILLS, summary
    assert sum(r.journal for r in kills) >= KILLS // 2, summary  # at least half while it wrote

    # The same store, seen through the test's own helpers.
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert commit_count(root) == 2 + sum(r.new_units > 0 for r in rig.rounds[1:])  # init, seed, later imports
    done = cli("check", "--json")
    assert done.returncode == 0 and json.loads(done.out)["ok"], done.out + done.err
    listed = json.loads(cli("list", "--status", "all", "-n", "0", "--json").out)
    assert {u["id"] for u in listed} == rig.expected and len(listed) == len(rig.expected)
    assert head(root) == rig.rounds[-1].head_after
