"""Recall's relevance (plaintext/relevance.py): calibrated, comparable across queries,
a threshold that can say "no match", and chat keeping irrelevant memories out."""

from __future__ import annotations

import json

import pytest

from memos_cli.plaintext.relevance import assess, query_words, relevance, text_words
from tests.conftest import assert_clean_failure, head

MEMORIES = [
    "Alice moved to Lisbon in March 2023 and works as a marine biologist.",
    "Alice prefers green tea to coffee, and never drinks anything after 6 pm.",
    "Bob is training for the Berlin marathon in September.",
    "Team standup moved to 10:00 on Tuesdays and Thursdays.",
]
ABOUT_NOTHING = "What is the capital of Peru?"


def test_relevance_rises_with_each_measure_and_stays_in_0_1() -> None:
    assert 0.0 < relevance(-1.0, 0.0) < relevance(0.3, 0.0) < relevance(0.6, 0.0) < relevance(0.6, 1.0) < 1.0
    assert relevance(0.2, 0.0) < 0.05 and relevance(0.8, 1.0) > 0.95


def test_coverage_counts_the_query_words_a_text_holds_as_the_index_sees_them() -> None:
    words = query_words("When did Caroline move to the new apartments?")
    assert words == {"carolin", "move", "new", "apart"}  # stop words dropped, Porter 2 stems
    found = assess(words, "Caroline: I moved into my apartment last week!", 0.5)
    assert found["coverage"] == 0.75 and found["words_missing"] == ["new"]
    assert found["words_found"] == ["apart", "carolin", "move"]
    assert "note" not in found
    assert "note" in assess(words, "x", 0.5, model="/models/other.gguf")  # the weights are MiniLM's
    # Accents fold and CJK is cut into pairs, as for the full-text index.
    assert query_words("résumé") == text_words("my resume") == {"resum"}
    assert query_words("护照") <= text_words("我的护照在抽屉里")
    # A query of stop words only has nothing to cover.
    assert query_words("what is it?") == set()
    assert assess(set(), "anything", 0.4)["coverage"] == 0.0


@pytest.fixture
def alice(store):
    for text in MEMORIES:
        store.add(text)
    return store


def test_a_query_the_store_knows_nothing_about_gets_low_relevance(alice) -> None:
    known = alice.recall("Where does Alice live?", 4)
    unknown = alice.recall(ABOUT_NOTHING, 4)
    assert len(known) == len(unknown) == 4
    assert max(h.relevance for h in known) > 0.9  # the Lisbon fact
    assert max(h.relevance for h in unknown) < 0.1
    assert unknown[0].signals["fused"] > 0.3  # while the per-query fused score still looks like a match
    lisbon = known[0]  # the demo's question: its relevance puts the Lisbon fact first
    assert "Lisbon" in lisbon.unit.text and lisbon.relevance == max(h.relevance for h in known)
    assert lisbon.signals["fused"] < max(h.signals["fused"] for h in known)  # the fused score alone would not
    assert lisbon.to_json()["relevance"] == round(lisbon.relevance, 4)
    why = lisbon.to_json(explain=True)["explain"]["relevance"]
    assert why["relevance"] == round(lisbon.relevance, 4) and why["words_found"] == ["alic"]


def test_min_relevance_drops_results_and_may_leave_none(alice) -> None:
    assert alice.recall(ABOUT_NOTHING, 4, min_relevance=0.5) == []
    kept = alice.recall("Where does Alice live?", 4, min_relevance=0.9)
    assert [h.unit.text for h in kept] == [MEMORIES[0]]
    with pytest.raises(Exception, match="bad min relevance"):
        alice.recall("Alice", 4, min_relevance=1.5)


def test_cli_no_match_min_relevance_default_and_bad_values(alice, cli, tmp_path) -> None:
    root = tmp_path / "store"
    done = cli("recall", ABOUT_NOTHING, "--min-relevance", "0.5")
    assert done.returncode == 0 and "no match" in done.out
    # Without the option, every result comes, each with its relevance.
    results = json.loads(cli("recall", ABOUT_NOTHING, "--json").out)["results"]
    assert len(results) == 4 and all(0 <= r["relevance"] < 0.1 for r in results)
    # [recall] min_relevance is the default (--json: an empty list); the option overrides it.
    assert cli("config", "set", "recall.min_relevance", "0.5").returncode == 0
    assert json.loads(cli("recall", ABOUT_NOTHING, "--json").out) == {"query": ABOUT_NOTHING, "results": []}
    batch = tmp_path / "q.jsonl"
    batch.write_text(json.dumps({"query": ABOUT_NOTHING}) + "\n" + json.dumps({"query": "Where does Alice live?"}) + "\n")
    lines = [json.loads(x) for x in cli("recall", "--batch", str(batch), "--min-relevance", "0.2").out.splitlines()]
    assert lines[0]["results"] == [] and lines[1]["results"][0]["relevance"] > 0.5
    explained = cli("recall", "Where does Alice live", "--explain", "-k", "1", env={"COLUMNS": "250"})
    assert "relevance" in explained.out and "query words" in explained.out
    before = head(root)
    done = cli("recall", "Alice", "--min-relevance", "1.5")
    assert done.returncode == 2 and "Traceback" not in done.err, done.err
    assert_clean_failure(cli("config", "set", "chat.min_relevance", "-1"), root, before, "min_relevance")


def test_chat_keeps_irrelevant_memories_out_of_the_prompt(alice, cli) -> None:
    def memories(question: str, *args: str) -> list[str]:
        done = cli("chat", question, "--json", "--no-save", "--no-kv", "--max-tokens", "1", "--temperature", "0", *args)
        assert done.returncode == 0, done.err
        return [m["text"] for m in json.loads(done.out)["memories"]]

    assert memories(ABOUT_NOTHING) == []
    about_alice = memories("Where does Alice live?")
    assert MEMORIES[0] in about_alice and not {MEMORIES[2], MEMORIES[3]} & set(about_alice)
    assert len(memories(ABOUT_NOTHING, "--min-relevance", "0")) == 4
    from memos_cli.chat.session import ChatOptions

    with pytest.raises(Exception, match="min-relevance"):
        ChatOptions(min_relevance=2.0)
