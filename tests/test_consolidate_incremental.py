"""Routine ``memos consolidate`` runs: only what changed since the last run, against its neighbours
(real git, LanceDB, embeddings; Gemma for the LLM judge)."""

from __future__ import annotations

import json
import random

import pytest

from memos_cli.plaintext.units import utcnow
from memos_cli.scheduler.model import VERDICTS_FILE
from memos_cli.scheduler.run import consolidate
from memos_cli.scheduler.scope import FULL_MIN_CHANGED, STATE_FILE

from .conftest import commit_count, git

NO_HEAT = ("consolidate.heat.activation_top", 0)
WORDS = ("harbour violin pepper glacier ledger saddle comet orchard lantern velvet quarry falcon marble tundra "
         "biscuit anchor meadow cobalt thistle parcel engine walnut summit pixel canyon ribbon tractor lagoon "
         "scarf beacon juniper hammock turbine sparrow ginger cellar plume riddle kettle mosaic").split()


def configure(store, *settings: tuple[str, object]) -> None:
    for key, value in settings:
        store.set_config(key, value)


def filler(n: int, seed: int = 7) -> list[dict]:
    """Unrelated notes (word salads), so that a unit's nearest neighbours are a small part of the store."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(WORDS, 6)) + f" {i}."} for i in range(n)]


def import_records(store, records: list[dict]) -> None:
    store.import_records(list(enumerate(records, 1)))


def run_json(cli, *args: str) -> dict:
    done = cli("consolidate", "--json", *args)
    assert done.returncode == 0, done.err
    return json.loads(done.out)


def test_a_routine_run_compares_what_changed_with_its_neighbours_and_finds_old_units(store, cli) -> None:
    configure(store, NO_HEAT)
    old_dup = store.add("Alice prefers green tea to coffee.", kind="preference")
    old_fact = store.add("My home address is 12 Oak Street, Leeds.", kind="fact", time="2024-01-10T00:00:00Z")
    import_records(store, filler(200))
    first = run_json(cli)
    assert first["mode"] == "full" and first["scope"]["default"]["reason"] == "no earlier run to go on from"
    assert first["counts"] == {} and first["commit"] is None
    assert (store.root / ".git" / "memos" / STATE_FILE).is_file()

    store.recall("harbour violin", k=3)  # accesses, folded into the files by the next write: not a change
    dup = store.add("alice prefers green tea to coffee", kind="preference")
    new_fact = store.add("My home address is 4 Elm Road, York.", kind="fact", time="2025-06-01T00:00:00Z")
    store.add("The boiler was serviced in October.")
    commits = commit_count(store.root)

    routine = run_json(cli)
    scope = routine["scope"]["default"]
    assert routine["mode"] == "incremental" and scope["changed"] == 3, routine
    assert scope["compared"] < 100  # the three and their nearest neighbours, not the 205 units
    done = {(a["action"], tuple(a["units"])) for a in routine["actions"] if a["status"] == "done"}
    assert done == {("merge", (old_dup.id, dup.id)), ("supersede", (new_fact.id, old_fact.id))}
    assert routine["commit"] and commit_count(store.root) == commits + 1
    assert store.get(dup.id).status == "archived" and store.get(old_dup.id).meta["merged"] == [dup.id]
    assert store.get(old_fact.id).valid_to == store.get(new_fact.id).time

    again = run_json(cli)
    assert again["mode"] == "incremental" and again["scope"]["default"]["changed"] == 0
    assert again["actions"] == [] and again["commit"] is None and commit_count(store.root) == commits + 1
    whole = run_json(cli, "--full")  # the full run agrees: nothing was left behind
    assert whole["mode"] == "full" and whole["scope"]["default"]["compared"] == 205 - 1 and whole["actions"] == []


def test_a_changed_policy_an_unknown_commit_or_full_make_a_full_run(store) -> None:
    configure(store, NO_HEAT)
    store.add("The spare key is under the blue flowerpot.")
    assert consolidate(store).mode == "full"
    assert consolidate(store).mode == "incremental"

    configure(store, ("consolidate.duplicates.similarity", 0.9))
    changed = consolidate(store)
    assert changed.mode == "full" and "policy" in changed.scopes["default"].reason
    assert consolidate(store).mode == "incremental"

    state_path = store.root / ".git" / "memos" / STATE_FILE
    state = json.loads(state_path.read_text())
    git(store.root, "commit", "-q", "--allow-empty", "-m", "elsewhere")
    other = git(store.root, "rev-parse", "HEAD").strip()
    git(store.root, "reset", "-q", "--hard", "HEAD~1")  # that commit is not in history any more
    state["cubes"]["default"]["commit"] = other
    state_path.write_text(json.dumps(state))
    unknown = consolidate(store)
    assert unknown.mode == "full" and "no longer in history" in unknown.scopes["default"].reason

    state_path.write_text("not json")
    assert consolidate(store).mode == "full"
    assert consolidate(store, full=True).scopes["default"].reason == "asked for (--full)"
    assert consolidate(store).mode == "incremental"

    state = json.loads(state_path.read_text())
    state["cubes"]["default"]["full_at"] = "2020-01-01T00:00:00Z"
    state_path.write_text(json.dumps(state))
    assert "days old" in consolidate(store).scopes["default"].reason  # a full run now and then

    import_records(store, filler(FULL_MIN_CHANGED + 1))  # most of the cube is new: reading it all is cheaper
    many = consolidate(store)
    assert many.mode == "full" and f"{FULL_MIN_CHANGED + 1} of its" in many.scopes["default"].reason


def test_access_counts_and_pins_are_not_changes_but_a_skipped_action_is_looked_at_again(store) -> None:
    configure(store, NO_HEAT)
    a = store.add("Dinner with Dana is on Friday at 7pm.")
    other = store.add("The library closes at 6pm on Sundays.")
    consolidate(store)
    store.recall("library", k=1)
    store.pin([other.id])  # a commit that changes the file's placement only
    b = store.add("dinner with dana is on friday at 7pm")
    path = store.root / "units" / b.id[-2] / b.id[-1] / f"{b.id}.json"
    original = path.read_text()
    path.write_text(original.replace("dinner with dana", "dinner with Dana"))  # a hand edit, not committed
    first = consolidate(store)
    assert first.scopes["default"].changed == [b.id]  # not the recalled or pinned unit
    merges = [x for x in first.actions if x.action == "merge"]
    assert [(m.units, m.status) for m in merges] == [([a.id, b.id], "skipped")]

    path.write_text(original)  # the hand edit undone: no commit changed b since the last run
    retried = consolidate(store)
    assert retried.mode == "incremental"
    assert [(x.action, x.units, x.status) for x in retried.actions] == [("merge", [a.id, b.id], "done")]
    assert consolidate(store).actions == []


def test_the_heat_block_read_from_a_few_columns_is_the_one_from_every_unit(store) -> None:
    from memos_cli.activation.blocks import heat_selection, hot_units
    from memos_cli.plaintext.retrieval import Filters
    from memos_cli.store.policy import HeatPolicy

    import_records(store, filler(60))  # one import: the same created_at, so heat ties, broken by id
    import_records(store, [{"text": f"Pinned note {i}.", "pinned": True} for i in range(2)]
                   + [{"text": "Old fact.", "time": "2020-01-01T00:00:00Z", "importance": 0.9},
                      {"text": "Gone soon.", "ttl": "1s"}])
    store.recall("harbour", k=5)  # pending accesses: hotter
    store.recall("violin pepper", k=3)
    now = utcnow()
    every = [u for u in store.list(Filters(cube="default"), limit=0) if u.expires_at is None or u.expires_at > now]
    for top in (1, 5, 12, 80):
        policy = HeatPolicy(activation_top=top)
        assert [u.id for u in hot_units(store, "default", policy, now)] == [u.id for u in heat_selection(every, policy, now)]
    leave = {every[0].id, every[1].id}
    policy = HeatPolicy(activation_top=8, cold_after_days=0)
    assert ([u.id for u in hot_units(store, "default", policy, now, leave_out=leave)]
            == [u.id for u in heat_selection([u for u in every if u.id not in leave], policy, now)])


def test_groups_found_by_two_dedupe_passes_make_one_merge_never_a_chain(store) -> None:
    # Above dedupe.EXACT_MAX units the passes are approximate: at 100k, one pass found two planted
    # repeats of a fact as a pair (d2 into d1) and a later pass the original with the first (d1 into
    # s). As two merges, the second found d1 archived by the first and was skipped.
    from memos_cli.scheduler.model import ModelSlot
    from memos_cli.scheduler.plan import Planner
    from memos_cli.scheduler.report import Report
    from memos_cli.scheduler.scope import snapshot

    s = store.add("Wen moved to Lisbon for work in 2021.")
    d1 = store.add("wen moved to lisbon for work in 2021")
    d2 = store.add("Note: Wen moved to Lisbon for work in 2021.")
    unrelated = store.add("The heating engineer comes on Tuesday.")
    snap = snapshot(store, "default")
    planner = Planner(store, store.config.consolidate, ModelSlot(store), Report(["default"], False), utcnow())
    merged: dict[str, dict[str, str]] = {}
    planner.absorb(snap, merged, d1.id, {d2.id: "near", unrelated.id: "as if a pass had put it there"})
    planner.absorb(snap, merged, s.id, {d1.id: "exact"})
    assert list(merged) == [s.id] and set(merged[s.id]) == {d1.id, d2.id}  # not a duplicate of s: left alone
    assert merged[s.id][d2.id].startswith("near (cosine")


@pytest.mark.slow
def test_a_routine_run_with_a_merge_rebuilds_the_heat_block_from_the_memory_after_it(store) -> None:
    from memos_cli import activation

    configure(store, ("consolidate.heat.activation_top", 2))
    dog = store.add("The family dog is called Biscuit.")
    assert [x.action for x in consolidate(store).actions] == ["promote"]
    repeat = store.add("the family dog is called biscuit")
    carol = store.add("Carol works at the bakery.")

    # The model loads while the merge is applied (the heat block will change), then builds the block
    # from the memory as it is after the merge: the survivor at its new version, the repeat gone.
    report = consolidate(store)
    assert report.mode == "incremental" and report.skipped == []
    assert {(x.action, x.status) for x in report.actions} == {("merge", "done"), ("promote", "done")}
    (record,) = activation.records(store, "default")
    assert record.sources == [{"id": carol.id, "version": 1}, {"id": dog.id, "version": 2}]
    assert activation.assess(store, record).status == "current" and repeat.id not in str(record.sources)
    assert consolidate(store).actions == []


@pytest.mark.slow
def test_the_llm_judge_is_not_asked_again_about_a_pair_it_judged(store) -> None:
    configure(store, NO_HEAT, ("consolidate.superseded.judge", "llm"), ("consolidate.superseded.similarity", 0.3),
              ("consolidate.duplicates.enabled", False))
    for text in ("I like tea.", "I like hiking.", "Bob works at Acme.", "Bob has two cats.",
                 "My favourite colour is green.", "My car is green."):  # the judge's prompt's examples of "No"
        store.add(text, kind="fact")
    first = consolidate(store)
    assert first.judged >= 1 and first.remembered == 0 and first.skipped == []
    lines = [json.loads(line) for line in (store.root / ".git" / "memos" / VERDICTS_FILE).read_text().splitlines()]
    assert len(lines) == first.judged  # every answer kept

    # The pairs judged "No" whose units are unchanged come up again: each is answered from what was kept.
    # (A "Yes" closes the older unit and gives both a new version: a pair with either is a new question.)
    units = {u.id: u for u in store.list(limit=0)}
    kept = [line for line in lines if not line["replaces"]
            and units[line["older"]].version == line["ov"] and units[line["newer"]].version == line["nv"]
            and units[line["older"]].valid_to is None and units[line["newer"]].valid_to is None]
    assert kept  # a 270M model leans to "No", and these are its prompt's own examples of "No"
    again = consolidate(store, full=True)  # every pair is a candidate again
    assert again.to_json()["judge"] == {"asked": again.judged, "remembered": again.remembered}
    if not any(line["replaces"] for line in lines):  # the likely case: the same pairs, none asked again
        assert again.judged == 0 and again.remembered == len(kept) == len(lines) and again.actions == []
    else:  # a new question can close an older unit first, and its later pairs are not needed
        assert 1 <= again.remembered <= len(kept)


def test_the_state_file_is_private_and_holds_no_memory_text(store) -> None:
    configure(store, NO_HEAT)
    store.add("The vault code is 7719.")
    consolidate(store)
    path = store.root / ".git" / "memos" / STATE_FILE
    assert "7719" not in path.read_text() and "vault" not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
