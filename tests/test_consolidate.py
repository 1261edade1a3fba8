"""``memos consolidate``: the scheduler, on real stores (real LanceDB, git, embeddings, and Gemma for the caches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from memos_cli.lock import StoreLock
from memos_cli.plaintext.units import utcnow
from memos_cli.scheduler.apply import apply_plan
from memos_cli.scheduler.model import ModelSlot
from memos_cli.scheduler.plan import Planner
from memos_cli.scheduler.report import Report
from memos_cli.scheduler.run import consolidate
from memos_cli.scheduler.scope import snapshot

from .conftest import assert_clean_failure, commit_count, git, head

NO_HEAT = ("consolidate.heat.activation_top", 0)  # most tests leave activation memory out: no model load


def configure(store, *settings: tuple[str, object]) -> None:
    for key, value in settings:
        store.set_config(key, value)


def unit(store, uid: str):
    return store.get(uid)


def clean(root: Path) -> bool:
    return git(root, "status", "--porcelain", "--untracked-files=all") == ""


# ---- duplicates ------------------------------------------------------------------------------


def test_duplicates_merge_into_the_oldest_and_a_second_run_does_nothing(store) -> None:
    configure(store, NO_HEAT)
    a = store.add("Alice prefers green tea to coffee.", kind="preference", tags=["alice"], importance=0.4,
                  sources=[{"chat": "s1"}])
    b = store.add("alice prefers green tea to coffee", kind="preference", tags=["drinks"], importance=0.9,
                  sources=[{"chat": "s2"}])
    c = store.add("Alice really prefers green tea to coffee.", tags=["tea"], pinned=True)
    other = store.add("Alice moved to Lisbon in March 2023.", kind="fact")
    commits = commit_count(store.root)

    report = consolidate(store)
    merges = [x for x in report.actions if x.action == "merge"]
    assert [(m.units, m.status) for m in merges] == [([a.id, b.id, c.id], "done")]
    assert "exact" in merges[0].reason and "near (cosine" in merges[0].reason
    assert report.commit and commit_count(store.root) == commits + 1 and clean(store.root)

    survivor = unit(store, a.id)
    assert survivor.status == "active" and survivor.version == 2
    assert survivor.tags == ["alice", "drinks", "tea"] and survivor.importance == 0.9
    assert survivor.sources == [{"chat": "s1"}, {"chat": "s2"}] and survivor.meta["merged"] == [b.id, c.id]
    assert survivor.pinned  # one of the group was pinned: the merged memory stays in context
    for dup in (b, c):
        gone = unit(store, dup.id)
        assert gone.status == "archived" and gone.meta["merged_into"] == a.id and not gone.pinned
    assert unit(store, other.id).version == 1
    recalled = [h.unit.id for h in store.recall("green tea", k=5)]
    assert recalled[0] == a.id and b.id not in recalled and c.id not in recalled  # archived: out of recall

    again = consolidate(store)
    assert again.actions == [] and again.commit is None and not again.changed
    assert commit_count(store.root) == commits + 1
    assert git(store.root, "log", "-1", "--format=%s").startswith("consolidate: merged 1")


# ---- expiry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "status"), [("archive", "archived"), ("delete", "deleted")])
def test_expired_units_are_archived_or_forgotten_by_policy(store, action: str, status: str) -> None:
    configure(store, NO_HEAT, ("consolidate.expiry.action", action))
    short = store.add("The parking code is 4412 this week.", ttl="1s")
    keep = store.add("The office is on the third floor.", ttl="30d")
    time.sleep(1.1)
    report = consolidate(store)
    assert [(x.action, x.units) for x in report.actions] == [("expire", [short.id])]
    assert unit(store, short.id).status == status and unit(store, keep.id).status == "active"
    assert consolidate(store).commit is None


# ---- superseded facts -------------------------------------------------------------------------


def test_a_newer_fact_closes_the_older_one_and_recall_prefers_it(store) -> None:
    configure(store, NO_HEAT)
    old = store.add("My home address is 12 Oak Street, Leeds.", kind="fact", time="2024-01-10T00:00:00Z")
    new = store.add("My home address is 4 Elm Road, York.", kind="fact", time="2025-06-01T00:00:00Z")
    hobby1 = store.add("I like tea.", kind="preference")
    hobby2 = store.add("I like hiking.", kind="preference")

    report = consolidate(store)
    assert [(x.action, x.units) for x in report.actions] == [("supersede", [new.id, old.id])]
    older, newer = unit(store, old.id), unit(store, new.id)
    assert older.status == "active" and older.valid_to == newer.time  # closed, never deleted
    assert older.meta["superseded_by"] == new.id and newer.supersedes == old.id
    assert unit(store, hobby1.id).valid_to is None and unit(store, hobby2.id).valid_to is None

    hits = store.recall("what is my home address?", k=2)
    assert [h.unit.id for h in hits] == [new.id, old.id]  # the current fact first; the old one still found
    assert hits[1].explain()["closed"]["weight"] < 1 and hits[0].explain()["closed"] is None
    assert consolidate(store).commit is None


# ---- heat and activation memory ------------------------------------------------------------------


def test_heat_promotes_the_hottest_into_activation_memory_and_rebuilds_only_when_the_set_changes(store) -> None:
    from memos_cli import activation

    configure(store, ("consolidate.heat.activation_top", 2))
    pinned = store.add("The family dog is called Biscuit.", pinned=True)
    units = [store.add(text) for text in ("Bob's birthday is on 3 May.", "The wifi password is on the fridge.",
                                          "Carol works at the bakery.", "The car is due for a service.")]
    store.recall("wifi password", k=1, context=False)  # accessed: hotter
    store.recall("Carol bakery", k=1, context=False)

    first = consolidate(store)
    promoted = [x for x in first.actions if x.action == "promote"]
    assert len(promoted) == 1 and promoted[0].status == "done"
    hot = promoted[0].units  # the pinned memory, then the hottest first
    assert hot[0] == pinned.id and set(hot[1:]) == {units[1].id, units[2].id}
    records = activation.records(store, "default")
    assert len(records) == 1 and records[0].selection == activation.Selection(top=2)
    assert [s["id"] for s in records[0].sources] == hot
    assert first.commit is None  # heat changes caches (derived data), not memory: no commit

    assert consolidate(store).actions == []  # same set: nothing rebuilt
    assert activation.records(store, "default")[0].sha256 == records[0].sha256

    for _ in range(3):
        store.recall("car service", k=1, context=False)
    third = consolidate(store)  # one unit became hot: appended; the one that cooled stays (top // 2 = 1 may)
    assert [(x.action, x.units, x.status) for x in third.actions] == [("promote", [units[3].id], "done")]
    grown = activation.records(store, "default")[0]
    assert [s["id"] for s in grown.sources] == hot + [units[3].id]
    assert consolidate(store).actions == []  # the cooled unit alone is no reason to rebuild

    for _ in range(4):
        store.recall("Bob birthday", k=1, context=False)
    fourth = consolidate(store)  # two of the block have now cooled out of the top 2: rebuilt in heat order
    moved = {x.action: x.units for x in fourth.actions}
    assert set(moved["demote"]) == {units[1].id, units[2].id} and moved["promote"] == [units[0].id]
    assert [s["id"] for s in activation.records(store, "default")[0].sources] == [pinned.id, units[0].id, units[3].id]

    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator

    with load_generator(None) as gen:  # chat loads the heat block (it holds the pinned memories too)
        session = ChatSession(store, gen, ChatOptions(save=False))
        assert session.head.source == "kv" and pinned.id in session.head.units


def test_cold_units_are_demoted(store) -> None:
    from memos_cli.activation.blocks import heat_selection
    from memos_cli.store.policy import HeatPolicy

    now = utcnow()
    fresh, old = store.add("fresh"), store.add("old")
    old.created_at = now - timedelta(days=200)
    chosen = heat_selection([fresh, old], HeatPolicy(activation_top=5, cold_after_days=90), now)
    assert [u.id for u in chosen] == [fresh.id]
    assert len(heat_selection([fresh, old], HeatPolicy(activation_top=5, cold_after_days=0), now)) == 2


# ---- the plan meets a concurrent writer -----------------------------------------------------------


def test_an_action_whose_units_changed_after_planning_is_skipped_and_the_rest_applied(store) -> None:
    configure(store, NO_HEAT)
    a = store.add("Dinner with Dana is on Friday at 7pm.")
    b = store.add("dinner with dana is on friday at 7pm")
    c = store.add("The library closes at 6pm on Sundays.")
    d = store.add("the library closes at 6pm on sundays")
    policy = store.config.consolidate
    report = Report(cubes=["default"], dry_run=False)
    snap = snapshot(store, "default")
    report.actions = Planner(store, policy, ModelSlot(store), report, utcnow()).plan(snap)
    assert len(report.actions) == 2
    store.edit(b.id, {"tags": ["edited"]})  # another writer, between plan and apply

    apply_plan(store, report, {"default": snap})
    by_survivor = {x.units[0]: x for x in report.actions}
    assert by_survivor[a.id].status == "skipped" and b.id in by_survivor[a.id].note
    assert by_survivor[c.id].status == "done"
    assert unit(store, b.id).status == "active" and unit(store, b.id).tags == ["edited"]
    assert unit(store, d.id).status == "archived"
    assert consolidate(store).actions[0].units == [a.id, b.id]  # the next run looks again


# ---- episodes (the chat model writes the summary) --------------------------------------------------


@pytest.mark.slow
def test_old_episodes_are_summarised_into_a_unit_with_them_as_sources(store) -> None:
    configure(store, NO_HEAT, ("consolidate.episodes.summarise", True), ("consolidate.episodes.min_episodes", 3),
              ("consolidate.duplicates.enabled", False))
    when = (utcnow() - timedelta(days=60)).isoformat()
    turns = [store.add(text, kind="episode", time=when, meta={"session": "s1"})
             for text in ("Alice: I adopted a cat called Miso.", "Bob: What colour is Miso?",
                          "Alice: Miso is ginger with white paws.", "Bob: Lovely, bring her next time.")]
    recent = store.add("Alice: see you tomorrow", kind="episode", meta={"session": "s2"})

    report = consolidate(store)
    done = [x for x in report.actions if x.action == "summarise"]
    assert len(done) == 1 and done[0].status == "done" and done[0].units[1:] == [t.id for t in turns]
    summary = unit(store, done[0].units[0])
    assert summary.kind == "summary" and summary.text.strip()
    assert summary.sources == [{"unit": t.id} for t in turns] and summary.time == turns[0].time
    for t in turns:
        assert unit(store, t.id).status == "archived" and unit(store, t.id).meta["summarised_into"] == summary.id
    assert unit(store, recent.id).status == "active"
    assert consolidate(store).commit is None


# ---- the command -------------------------------------------------------------------------------------


@pytest.fixture
def dup_store(store) -> Path:
    configure(store, NO_HEAT)
    store.add("Alice prefers green tea to coffee.")
    store.add("alice prefers green tea to coffee")
    return store.root


def test_dry_run_changes_nothing_and_json_has_the_plan(dup_store: Path, cli) -> None:
    before = head(dup_store)
    done = cli("consolidate", "--dry-run", "--json")
    assert done.returncode == 0, done.err
    plan = json.loads(done.out)
    assert plan["dry_run"] and plan["commit"] is None and plan["counts"] == {"merge": 1}
    assert plan["actions"][0]["status"] == "planned" and plan["summary"] == "would have merged 1"
    assert head(dup_store) == before and clean(dup_store)
    text = cli("consolidate", "-n")
    assert "merge" in text.out and "would have merged 1" in text.out and head(dup_store) == before


def test_quiet_prints_nothing_when_nothing_changed_and_log_gets_a_line_per_run(dup_store: Path, cli,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "consolidate.log"
    first = cli("consolidate", "--quiet", "--log", str(log))
    assert first.returncode == 0 and "merged 1" in first.out and first.err == ""
    second = cli("consolidate", "--quiet", "--log", str(log))
    assert second.returncode == 0 and second.out == "" and second.err == ""
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "merged 1" in lines[0] and "commit=" in lines[0]
    assert "nothing to do" in lines[1] and "commit=-" in lines[1]


def test_bad_input_fails_cleanly_and_changes_nothing(dup_store: Path, cli, tmp_path: Path) -> None:
    before = head(dup_store)
    assert_clean_failure(cli("consolidate", "--cube", "nope"), dup_store, before, "no cube 'nope'")
    assert_clean_failure(cli("consolidate", "--log", str(tmp_path / "no" / "such.log")), dup_store, before,
                         "no such directory")
    config = dup_store / "memos.toml"
    original = config.read_text()
    config.write_text(original + '\n[consolidate.duplicates]\nsimilarity = "high"\n')
    git(dup_store, "commit", "-qam", "a hand edit")
    edited = head(dup_store)
    assert_clean_failure(cli("consolidate"), dup_store, edited, "consolidate.duplicates.similarity")
    config.write_text(original + "\n[consolidate.duplicates]\nsimilarty = 0.9\n")
    git(dup_store, "commit", "-qam", "a typo")
    assert_clean_failure(cli("consolidate"), dup_store, head(dup_store), "did you mean")


def test_a_second_consolidate_waits_then_says_who_runs(dup_store: Path, cli, tmp_path: Path) -> None:
    before = head(dup_store)
    log = tmp_path / "consolidate.log"
    lock = StoreLock(dup_store / ".git" / "memos" / "consolidate.lock")
    lock.acquire()
    try:
        started = time.monotonic()
        done = cli("consolidate", "--log", str(log), env={"MEMOS_LOCK_TIMEOUT": "1"})
        assert time.monotonic() - started >= 1
    finally:
        lock.release()
    assert_clean_failure(done, dup_store, before, "another memos consolidate is running")
    assert done.returncode == 4
    assert "error: another memos consolidate is running" in log.read_text()  # cron's log shows it too
    assert cli("consolidate", "--quiet").returncode == 0  # once the first is done


def test_a_run_is_one_commit_that_diff_shows_and_rollback_undoes(dup_store: Path, cli) -> None:
    listed = json.loads(cli("list", "--json").out)
    assert cli("consolidate").returncode == 0
    diff = cli("diff", "--json")
    assert diff.returncode == 0 and json.loads(diff.out)["changed"] == 2, diff.out
    newer = listed[0]["id"]  # newest first: the duplicate
    history = json.loads(cli("show", newer, "--history", "--json").out)
    assert [v["unit"]["status"] for v in history] == ["active", "archived"] and history[1]["op"] == "consolidate"
    assert cli("rollback", "HEAD~1").returncode == 0
    assert len(json.loads(cli("list", "--json").out)) == 2  # both active again


def test_a_missing_model_skips_the_steps_that_need_it_and_the_rest_is_done(store, cli) -> None:
    configure(store, ("chat.model", str(store.root.parent / "missing.gguf")), ("consolidate.superseded.judge", "llm"))
    a = store.add("Alice prefers green tea to coffee.")
    store.add("alice prefers green tea to coffee")
    store.add("My home address is 12 Oak Street.", kind="fact")
    store.add("My home address is 4 Elm Road.", kind="fact")
    done = cli("consolidate", "--json")
    assert done.returncode == 1 and "Traceback" not in done.err
    report = json.loads(done.out)
    assert report["counts"] == {"merge": 1} and report["commit"]
    skipped = [line for line in done.err.splitlines() if line.startswith("memos: skipped ")]
    assert len(skipped) == 2 and all("missing.gguf" in line for line in skipped), done.err
    assert any("superseded" in line for line in skipped) and any("heat" in line for line in skipped)
    assert clean(store.root) and unit(store, a.id).meta["merged"]


@pytest.mark.slow
def test_the_llm_judge_asks_the_chat_model(store) -> None:
    configure(store, NO_HEAT, ("consolidate.superseded.judge", "llm"))
    old = store.add("My home address is 12 Oak Street.", kind="fact", time="2024-01-01T00:00:00Z")
    new = store.add("My home address is 4 Elm Road.", kind="fact", time="2025-01-01T00:00:00Z")
    report = consolidate(store)
    assert report.skipped == [] and report.timings["superseded"] > 0
    assert report.judged == 1  # the one close pair went to the chat model (the rules would not ask it)
    for action in report.actions:  # a 270M base model is a weak judge: whatever it said, it said it here
        assert action.action == "supersede" and action.units == [new.id, old.id]
        assert "the chat model judged it an update" in action.reason
        assert unit(store, old.id).valid_to == unit(store, new.id).time


# ---- concurrency --------------------------------------------------------------------------------------


ADDER = """
import json, subprocess, sys
store, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", store, "add", f"note {tag} {i}",
                           "--tag", tag, "--json"], capture_output=True, text=True)
    print(json.dumps({"code": done.returncode, "id": json.loads(done.stdout)["id"] if done.returncode == 0 else None,
                      "err": done.stderr.strip()}), flush=True)
"""


@pytest.mark.slow
def test_adds_from_other_processes_during_consolidate_all_land(store, cli) -> None:
    """Writers with the default lock timeout are never starved by the scheduler, whatever the machine's speed:
    each does a fixed number of adds while consolidate runs, and every one must succeed and be there."""
    configure(store, ("consolidate.heat.activation_top", 5))
    records = [{"text": f"Reminder {i}: water the plants on day {i}."} for i in range(150)]
    records += [{"text": f"reminder {i}: water the plants on day {i}"} for i in range(0, 150, 3)]  # 50 duplicates
    imported = cli("import", "-", input="\n".join(json.dumps(r) for r in records))
    assert imported.returncode == 0, imported.err

    env = {k: v for k, v in os.environ.items() if k != "MEMOS_LOCK_TIMEOUT"}  # the default timeout
    adders = [subprocess.Popen([sys.executable, "-c", ADDER, str(store.root), f"w{n}", "6"],
                               stdout=subprocess.PIPE, text=True, env=env) for n in range(2)]
    runs = [cli("consolidate", "--json", env=env)]
    while any(p.poll() is None for p in adders) or len(runs) < 2:
        runs.append(cli("consolidate", "--json", env=env))
    results = [json.loads(line) for p in adders for line in p.communicate(timeout=120)[0].splitlines() if line.strip()]

    assert all(r.returncode == 0 for r in runs), [r.err for r in runs]
    first = json.loads(runs[0].out)
    assert first["counts"].get("merge") == 50 and first["commit"]
    assert len(results) == 12 and all(r["code"] == 0 for r in results), [r["err"] for r in results if r["code"]]
    found = {u["id"] for u in json.loads(cli("list", "--tag", "w0", "--json", "-n", "0").out)}
    found |= {u["id"] for u in json.loads(cli("list", "--tag", "w1", "--json", "-n", "0").out)}
    assert {r["id"] for r in results} <= found  # every add that reported success is there
    check = cli("check")
    assert check.returncode == 0, check.out + check.err
