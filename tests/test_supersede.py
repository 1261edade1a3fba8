"""Superseded facts (scheduler/supersede.py): the subject rule, the rule judge with real embeddings, the LLM
judge's helpers, and a scale check."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memos_cli.plaintext.units import MemoryUnit
from memos_cli.scheduler.subject import subject
from memos_cli.scheduler.supersede import (
    Supersession,
    candidate_pairs,
    effective_time,
    find_superseded,
    judge_prompt,
    parse_verdict,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def unit(n: int, text: str, *, day: float | None = None, kind: str = "fact", user: str = "ann", **fields) -> MemoryUnit:
    """Unit number ``n`` (its id sorts by n), effective on ``day`` (default: day n)."""
    when = T0 + timedelta(days=n if day is None else day)
    for name in ("valid_from", "time", "created_at"):
        fields.setdefault(name, when)
    return MemoryUnit(id=f"01m7yq0hz7{n:04d}", text=text, kind=kind, user=user, cube="default", **fields)


@pytest.mark.parametrize(("text", "key"), [
    ("My address is 12 Oak Street.", "my address"),
    ("My address is now 4 Elm Road", "my address"),
    ("Update: my address is 4 Elm Road.", "my address"),  # a generic label is set aside
    ("Alice's favourite colour is green.", "alice s favourite colour"),
    ("My favorite color is blue", "my favourite colour"),  # one spelling
    ("Home address: 4 Elm Road", "home address"),
    ("wifi password = hunter2", "wifi password"),
    ("The name of my dog is Rex.", "the name of my dog"),
    ("My phone number is 555-1234. Call after six.", "my phone number"),  # the first sentence only
    ("The meeting is at 10.", "the meeting|at"),  # a preposition joins the key
    ("The meeting is in room 4.", "the meeting|in"),
    ("Alice lives in Lisbon.", "alice|lives"),
    ("Alice moved to Porto.", "alice|lives"),  # moved to = lives in
    ("Alice is living in Porto now", "alice|lives"),
    ("Alice no longer lives in Lisbon.", "alice|lives"),
    ("I live in Berlin.", "i|lives"),
    ("My sister lives in Rome.", "my sister|lives"),
    ("Bob works at Acme.", "bob|works"),
    ("I work for Globex now.", "i|works"),
    ("Alice prefers tea.", "alice|prefers"),
    ("Alice prefers coffee now.", "alice|prefers"),
    # None: no subject the rule trusts.
    ("What is my address?", None),
    ("My address is 12 Oak Street?", None),  # a question
    ("It is raining.", None),
    ("This is great.", None),
    ("There is a cat in the garden.", None),
    ("I am tired.", None),  # a pronoun alone is no subject
    ("I like tea.", None),  # "like" is not one-valued
    ("I like hiking.", None),
    ("Alice is a doctor.", None),  # a bare name: many things are true of Alice at once
    ("My sister is a doctor.", None),  # a person, not an attribute
    ("He lives in Paris.", None),  # whose?
    ("My address was 12 Oak Street.", None),  # the past says nothing about now
    ("Alice will move to Porto.", None),  # nor does the future
    ("If Alice lives in Porto, call her.", None),
    ("Note: buy milk", None),
    ("Went for a long walk by the river.", None),  # no copula, no state verb
    ("", None),
])
def test_subject(text: str, key: str | None) -> None:
    assert subject(text) == key


def test_effective_time_prefers_valid_from_then_time_then_created_at() -> None:
    a, b, c = T0, T0 + timedelta(days=1), T0 + timedelta(days=2)
    assert effective_time(MemoryUnit(id="01m7yq0hz7aaaa", text="x", valid_from=a, time=b, created_at=c)) == a
    assert effective_time(MemoryUnit(id="01m7yq0hz7aaaa", text="x", time=b, created_at=c)) == b
    assert effective_time(MemoryUnit(id="01m7yq0hz7aaaa", text="x", created_at=c)) == c
    naive = effective_time(MemoryUnit(id="01m7yq0hz7aaaa", text="x", created_at=datetime(2024, 5, 1)))
    assert naive == datetime(2024, 5, 1, tzinfo=UTC)  # a naive time is taken as UTC


def supersede(units: list[MemoryUnit], embedder, **kw) -> list[Supersession]:
    return find_superseded(units, embedder.embed([u.text for u in units]), **kw)


def test_an_address_change_closes_the_old_address(embedder) -> None:
    units = [unit(1, "My address is 12 Oak Street."), unit(2, "My address is 4 Elm Road.")]
    (found,) = supersede(units, embedder)
    assert (found.older, found.newer, found.closes_at) == (units[0].id, units[1].id, effective_time(units[1]))
    assert found.reason.startswith('same subject "my address" (cosine 0.')
    # The newer one is the one with the later effective time, whatever the order given or the ids.
    late_first = [unit(1, "My address is 4 Elm Road.", day=9), unit(2, "My address is 12 Oak Street.", day=3)]
    assert [(s.older, s.newer) for s in supersede(late_first, embedder)] == [(late_first[1].id, late_first[0].id)]


@pytest.mark.parametrize(("old", "new"), [
    ("Alice prefers tea.", "Alice prefers coffee now."),
    ("Alice lives in Lisbon.", "Alice moved to Porto."),
    ("My favourite colour is green.", "My favourite colour is blue."),
    ("The team standup is at 10:00.", "The team standup is at 11:00."),
])
def test_a_new_value_for_the_same_subject_supersedes(embedder, old: str, new: str) -> None:
    units = [unit(1, old), unit(2, new)]
    assert [(s.older, s.newer) for s in supersede(units, embedder)] == [(units[0].id, units[1].id)]


@pytest.mark.parametrize(("old", "new"), [
    ("I like tea.", "I like hiking."),  # both true: no subject
    ("Alice prefers tea.", "Alice prefers dark mode in her editor."),  # same key, not alike enough
    ("The meeting is at 10.", "The meeting is in room 4."),  # another key
    ("My address is 12 Oak Street.", "My address is still 12 Oak Street."),  # the same value
    ("My address is 12 Oak Street.", "My phone number is 555-1234."),
])
def test_statements_that_do_not_replace_each_other(embedder, old: str, new: str) -> None:
    assert supersede([unit(1, old), unit(2, new)], embedder) == []


def test_other_users_are_never_linked(embedder) -> None:
    units = [unit(1, "My address is 12 Oak Street.", user="ann"), unit(2, "My address is 4 Elm Road.", user="bob")]
    assert supersede(units, embedder) == []


def testmeta_subject_links_whatever_the_texts(embedder) -> None:
    units = [
        unit(1, "Locker code 4411, the one by the pool.", meta={"subject": "Gym  Locker"}),
        unit(2, "They gave me a new combination today: 9072.", meta={"subject": "gym locker"}),
    ]
    (found,) = supersede(units, embedder)
    assert (found.older, found.newer) == (units[0].id, units[1].id)
    assert found.reason == 'same meta.subject "gym locker"'


def test_differentmeta_subjects_keep_same_text_subjects_apart(embedder) -> None:
    units = [unit(1, "My address is 12 Oak Street.", meta={"subject": "home"}),
             unit(2, "My address is 4 Elm Road.", meta={"subject": "office"})]
    assert supersede(units, embedder) == []


def test_a_chain_closes_each_by_the_next(embedder) -> None:
    units = [
        unit(1, "My address is 12 Oak Street."),
        unit(2, "My address is 4 Elm Road.", time=T0 + timedelta(days=50), valid_from=None),
        unit(3, "My address is 9 Birch Lane.", day=80),
    ]
    found = supersede(units, embedder)
    assert [(s.older, s.newer) for s in found] == [(units[0].id, units[1].id), (units[1].id, units[2].id)]
    assert [s.closes_at for s in found] == [T0 + timedelta(days=50), T0 + timedelta(days=80)]
    # Given as meta subjects instead, the same chain.
    keyed = [unit(n, t, meta={"subject": "address"}) for n, t in
             ((1, "Oak Street 12"), (2, "moved to Elm Road 4"), (3, "now 9 Birch Lane"))]
    assert [(s.older, s.newer) for s in supersede(keyed, embedder)] == [(keyed[0].id, keyed[1].id),
                                                                        (keyed[1].id, keyed[2].id)]


def test_ties_in_time_are_broken_by_id(embedder) -> None:
    units = [unit(7, "My address is 4 Elm Road.", day=5), unit(3, "My address is 12 Oak Street.", day=5)]
    assert [(s.older, s.newer) for s in supersede(units, embedder)] == [(units[1].id, units[0].id)]


def test_an_unrelated_statement_in_between_does_not_break_the_chain(embedder) -> None:
    units = [unit(1, "Alice prefers tea."), unit(2, "Alice prefers window seats on long flights."),
             unit(3, "Alice prefers coffee now.")]
    assert [(s.older, s.newer) for s in supersede(units, embedder)] == [(units[0].id, units[2].id)]


def test_only_open_active_units_of_the_given_kinds_take_part(embedder) -> None:
    units = [
        unit(1, "My address is 12 Oak Street."),
        unit(2, "My address is 7 Pine Court.", status="archived"),
        unit(3, "My address is 3 Ash Grove.", valid_to=T0 + timedelta(days=4)),  # already closed
        unit(4, "My address is 8 Maple Road.", kind="note"),
        unit(5, "My address is 4 Elm Road."),
    ]
    assert [(s.older, s.newer) for s in supersede(units, embedder)] == [(units[0].id, units[4].id)]
    # With notes in the kinds, the note joins the chain.
    found = supersede(units, embedder, kinds=["fact", "note"])
    assert [(s.older, s.newer) for s in found] == [(units[0].id, units[3].id), (units[3].id, units[4].id)]


def test_exact_duplicates_are_not_linked(embedder) -> None:
    units = [unit(1, "My address is 12 Oak Street."), unit(2, "my address is 12 oak street")]
    assert supersede(units, embedder) == []
    keyed = [unit(1, "Oak Street 12", meta={"subject": "address"}), unit(2, "oak street 12!", meta={"subject": "address"})]
    assert supersede(keyed, embedder) == []


def test_output_is_sorted_and_independent_of_input_order(embedder) -> None:
    units = [
        unit(1, "My address is 12 Oak Street."),
        unit(2, "Alice lives in Lisbon."),
        unit(3, "Bob prefers tea."),
        unit(4, "Bob prefers coffee now."),
        unit(5, "Alice moved to Porto."),
        unit(6, "My address is 4 Elm Road."),
        unit(7, "I like hiking."),
    ]
    vectors = embedder.embed([u.text for u in units])
    found = find_superseded(units, vectors)
    assert [(s.older, s.newer) for s in found] == [(units[2].id, units[3].id), (units[1].id, units[4].id),
                                                   (units[0].id, units[5].id)]
    order = list(range(len(units)))
    random.Random(3).shuffle(order)
    assert find_superseded([units[i] for i in order], vectors[order]) == found


def test_vectors_must_match_the_units() -> None:
    with pytest.raises(ValueError):
        find_superseded([unit(1, "My address is 12 Oak Street.")], np.zeros((2, 4)))


def test_candidate_pairs_put_shared_subjects_first(embedder) -> None:
    units = [
        unit(1, "My address is 12 Oak Street."),
        unit(2, "Bob works at Acme."),
        unit(3, "Bob has a job at Acme Corporation."),  # no subject of the rule's, but near: a later candidate
        unit(4, "My address is 4 Elm Road."),
        unit(5, "I like tea.", user="bob"),
        unit(6, "My address is 4 Elm Road.", user="bob"),  # another user
    ]
    vectors = embedder.embed([u.text for u in units])
    pairs = candidate_pairs(units, vectors, similarity=0.75, kinds=["fact"])
    assert pairs[0][:2] == (units[0].id, units[3].id) and pairs[0][2] >= 0.75
    assert (units[1].id, units[2].id) in [p[:2] for p in pairs]
    assert all({a, b} <= {u.id for u in units if u.user == "ann"} for a, b, _ in pairs)
    assert candidate_pairs(units, vectors, similarity=0.75, kinds=["fact"], limit=1) == pairs[:1]


@pytest.mark.parametrize(("text", "verdict"), [
    ("Yes", True), (" yes.", True), ("YES, it does", True), ("\nYes\n", True),
    ("No", False), (" no.", False), ("No, they differ", False),
    ("", None), ("Maybe", None), ("Yesterday", None), ("Nope", None), ("I think yes", None),
])
def test_parse_verdict(text: str, verdict: bool | None) -> None:
    assert parse_verdict(text) is verdict


def test_judge_prompt_holds_both_texts_on_their_own_lines() -> None:
    prompt = judge_prompt("My address is 12 Oak Street.", "My address is\n4 Elm Road.")
    assert "Older: My address is 12 Oak Street.\nNewer: My address is 4 Elm Road.\nReplaces:" in prompt
    assert prompt.endswith("Replaces:")
    assert "Replaces: Yes" in prompt and "Replaces: No" in prompt  # few-shot, both answers


def _synthetic(n: int, groups: int, dim: int = 64, seed: int = 0) -> tuple[list[MemoryUnit], np.ndarray]:
    """``n`` units in ``groups`` subjects ("My item alpha bravo is value k"), each group's vectors close."""
    rng = np.random.default_rng(seed)
    names = [f"{a} {b}" for a in ("alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo")
             for b in ("lima", "mike", "oscar", "papa", "romeo", "sierra", "tango", "victor")]
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    which = rng.integers(0, groups, n)
    vectors = centres[which] + 0.2 * rng.standard_normal((n, dim)).astype(np.float32)
    units = [MemoryUnit(id=f"01m{i:011d}", text=f"My item {names[g % 64]} {g // 64} is value {i}.", kind="fact",
                        user="ann", created_at=T0 + timedelta(seconds=int(rng.integers(0, 10**7))))
             for i, g in enumerate(which.tolist())]
    return units, vectors


def test_scale_twenty_thousand_units() -> None:
    units, vectors = _synthetic(20_000, 3000)
    start = time.perf_counter()
    found = find_superseded(units, vectors)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    groups = {subject(u.text) for u in units}
    assert len(found) == len(units) - len(groups)  # every group keeps only its latest open
    assert len({s.older for s in found}) == len(found)

    start = time.perf_counter()
    pairs = candidate_pairs(units, vectors, similarity=0.75, kinds=["fact"], limit=200)
    assert time.perf_counter() - start < 10
    assert len(pairs) == 200 and all(c >= 0.75 for _, _, c in pairs)


def test_candidate_pairs_without_subjects_at_scale_are_bounded() -> None:
    # No text has a subject: every pair comes from the LSH search (more units than the exact search takes).
    rng = np.random.default_rng(2)
    n = 6000
    vectors = rng.standard_normal((n, 64)).astype(np.float32)
    planted = rng.choice(n, 100, replace=False)
    twins = vectors[planted] + 0.1 * rng.standard_normal((100, 64)).astype(np.float32) * np.linalg.norm(
        vectors[planted], axis=1, keepdims=True) / 8
    vectors = np.vstack([vectors, twins])
    units = [MemoryUnit(id=f"01m{i:011d}", text=f"went walking {i}", kind="fact", user="ann",
                        created_at=T0 + timedelta(seconds=i)) for i in range(len(vectors))]
    start = time.perf_counter()
    pairs = candidate_pairs(units, vectors, similarity=0.75, kinds=["fact"], limit=50)
    assert time.perf_counter() - start < 10
    assert len(pairs) == 50
    truth = {(units[p].id, units[n + k].id) for k, p in enumerate(planted.tolist())}
    assert {p[:2] for p in pairs} <= truth
    assert [c for _, _, c in pairs] == sorted((c for _, _, c in pairs), reverse=True)
