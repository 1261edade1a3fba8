"""Crash safety: writes killed with SIGKILL; the next command puts the store right and says so.

`memos import` is killed at random moments, mostly while it writes: a small
version of ``benchmarks/bench_crash.py`` (whose ``CrashRig`` runs the imports,
the kills and the checks (a)-(e) described there). `edit`, `forget`, `pin`,
`rollback` and `config set` are killed at named points of their transaction
(``MEMOS_TEST_KILL_AT``, see ``memos_cli.store.killpoint``): after writing their
files, before the commit, and right after it. A killed `purge` is in
``test_purge.py``.
"""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from memos_cli.plaintext import files
from memos_cli.store.config import StoreConfig
from memos_cli.store.killpoint import ENV as KILL_AT
from memos_cli.store.store import MemoryStore

from .conftest import Runner, commit_count, git, head

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
UNITS = 200
KILLS = 4
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


# ---- each write killed at a named point of its transaction ------------------------------------------


def killed(cli: Runner, *args: str, at: str) -> None:
    """Run a memos command that kills itself at point ``at``; it must have died there."""
    done = cli(*args, env={KILL_AT: at})
    assert done.returncode == -signal.SIGKILL, f"not killed at {at}: exit {done.returncode}, {done.err}"


def unit_field(root: Path, embedder: Any, uid: str, name: str) -> Any:
    """The field as the work tree, HEAD and the search table have it (None for a unit that is not
    there); all three must agree: a unit is wholly old or wholly new."""
    path = files.unit_path(uid)
    work = files.loads((root / path).read_bytes(), path) if (root / path).exists() else None
    shown = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{path}"], capture_output=True)
    committed = files.loads(shown.stdout, path) if shown.returncode == 0 else None
    rows = MemoryStore(root, embedder=embedder).get_many([uid])
    seen = [None if u is None else getattr(u, name) for u in (work, committed, rows[0] if rows else None)]
    assert seen[0] == seen[1] == seen[2], f"{uid}.{name}: work tree, HEAD and table differ: {seen}"
    return seen[0]


def setting(root: Path, key: str) -> Any:
    """The setting in memos.toml, which must be as HEAD has it."""
    assert (root / "memos.toml").read_text(encoding="utf-8") == git(root, "show", "HEAD:memos.toml")
    return StoreConfig.load(root / "memos.toml").get(key).value


Case = Callable[[MemoryStore, Path], tuple[list[str], Callable[[Path], Any], Any, Any]]


def edit_case(store: MemoryStore, root: Path):
    unit = store.add("Alice lives in Lisbon")
    return ["edit", unit.id, "--text", "Alice lives in Porto"], \
        lambda r: unit_field(r, store.embedder, unit.id, "text"), "Alice lives in Lisbon", "Alice lives in Porto"


def forget_case(store: MemoryStore, root: Path):
    unit = store.add("Bob drinks green tea")
    return ["forget", unit.id, "--yes"], lambda r: unit_field(r, store.embedder, unit.id, "status"), "active", "deleted"


def pin_case(store: MemoryStore, root: Path):
    unit = store.add("The deadline is the third of March")
    return ["pin", unit.id], lambda r: unit_field(r, store.embedder, unit.id, "pinned"), False, True


def rollback_case(store: MemoryStore, root: Path):
    kept = store.add("Alice lives in Lisbon")
    target = head(root)
    store.edit(kept.id, {"text": "Alice lives in Porto"})
    added = store.add("Carol adopted a grey cat")

    def view(r: Path) -> tuple[Any, Any]:
        return unit_field(r, store.embedder, kept.id, "text"), unit_field(r, store.embedder, added.id, "text")

    return ["rollback", target, "--yes"], view, ("Alice lives in Porto", "Carol adopted a grey cat"), \
        ("Alice lives in Lisbon", None)


def config_case(store: MemoryStore, root: Path):
    store.add("a memory, so that the store has a table")
    return ["config", "set", "recall.k", "7"], lambda r: setting(r, "recall.k"), setting(root, "recall.k"), 7


CASES: dict[str, Case] = {"edit": edit_case, "forget": forget_case, "pin": pin_case, "rollback": rollback_case,
                          "config": config_case}


# Each case runs two memos commands (the killed one, and `check`, which recovers): 5-7 s of CPU.
# The quick loop (-m "not slow") kills `edit` at both points; the full suite kills them all.
QUICK = {("edit", "written"), ("edit", "committed")}


@pytest.mark.parametrize(("op", "point"), [
    pytest.param(op, point, id=f"{op}-{point}", marks=() if (op, point) in QUICK else pytest.mark.slow)
    for op in CASES for point in ("written", "committed")])
def test_a_write_killed_in_its_transaction_is_undone_or_kept_whole(op: str, point: str, store: MemoryStore,
                                                                   cli: Runner) -> None:
    root = store.root
    args, view, old, new = CASES[op](store, root)
    before, commits = head(root), commit_count(root)
    assert view(root) == old

    killed(cli, *args, at=point)
    assert (root / ".git" / "memos" / "journal.json").exists()  # the kill came inside the transaction

    done = cli("check", "--json")  # the next command: recovers, says so, and finds the store sound
    assert done.returncode == 0 and json.loads(done.out)["ok"] is True, done.out + done.err
    journal = root / ".git" / "memos" / "journal.json"
    assert not journal.exists()
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    if point == "written":  # not committed: undone, history as it was
        assert f"recovered from an interrupted {op}" in done.err and "changes were undone" in done.err, done.err
        assert head(root) == before and view(root) == old
    else:  # committed: kept, one commit of that op
        assert f"an interrupted {op}" in done.err and "had committed before it stopped" in done.err, done.err
        assert commit_count(root) == commits + 1 and view(root) == new
        assert git(root, "log", "-1", "--format=%(trailers:key=Memos-Op,valueonly)").strip() == op
    # And the store takes the next write.
    assert MemoryStore(root, embedder=store.embedder).add("life goes on").id
