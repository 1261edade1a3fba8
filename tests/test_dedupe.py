"""Duplicate detection (scheduler/dedupe.py) on small hand-made cases, with real embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from memos_cli.scheduler.dedupe import distinguishing, find_duplicates, normalise, texts_agree


def test_normalise_sets_case_space_and_punctuation_aside() -> None:
    assert normalise("  Alice likes TEA! ") == normalise("alice likes tea") == "alice likes tea"


def test_distinguishing_words_are_numbers_and_names_not_sentence_starts() -> None:
    assert distinguishing("The meeting with Bob is at 10. Then lunch.") == {"bob", "10"}


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Alice prefers green tea in the morning.", "Alice prefers green tea in the mornings", True),  # most words shared
    ("Alice prefers green tea in the morning.", "alice prefers green tea in the morning", True),
    ("Alice moved to Lisbon in 2023.", "Alice moved to Porto in 2023.", False),  # a different place
    ("The standup is at 10:00 on Tuesdays.", "The standup is at 11:00 on Tuesdays.", False),  # a different time
    ("Bob really likes hiking in the Alps.", "Bob likes hiking in the Alps.", True),
])
def test_texts_agree(a: str, b: str, same: bool) -> None:
    assert texts_agree(a, b, 0.6)[0] is same


def test_texts_agree_needs_enough_shared_words() -> None:
    agree, overlap = texts_agree("Alice prefers green tea.", "Alice sometimes drinks green tea at work.", 0.6)
    assert not agree and overlap == pytest.approx(3 / 8)


def test_groups_with_real_embeddings(embedder) -> None:
    texts = [
        "Alice prefers green tea to coffee.",            # 0 survivor of the tea group
        "alice prefers green tea to coffee",             # 1 exact duplicate of 0
        "Alice really prefers green tea to coffee.",     # 2 near duplicate of 0
        "Alice moved to Lisbon in March 2023.",          # 3
        "Alice moved to Porto in March 2023.",           # 4 not a duplicate: another place
        "The team standup is at 10:00.",                 # 5
        "The team standup is at 11:00.",                 # 6 not a duplicate: another time
        "Bob is training for the Berlin marathon.",      # 7 alone
    ]
    ids = [f"01m7yq0hz716{i:02d}" for i in range(len(texts))]
    vectors = embedder.embed(texts)
    groups = find_duplicates(ids, texts, vectors)
    assert [(g.survivor, g.duplicates) for g in groups] == [(ids[0], [ids[1], ids[2]])]
    assert groups[0].reasons[ids[1]] == "exact" and groups[0].reasons[ids[2]].startswith("near (cosine")
    # The oldest unit survives whatever the order given.
    rev = find_duplicates(ids[::-1], texts[::-1], vectors[::-1])
    assert [(g.survivor, sorted(g.duplicates)) for g in rev] == [(ids[0], [ids[1], ids[2]])]
    # Nothing to merge twice: without the duplicates, no group.
    keep = [0, 3, 4, 5, 6, 7]
    assert find_duplicates([ids[i] for i in keep], [texts[i] for i in keep], vectors[keep]) == []


def test_a_chain_does_not_merge_things_that_differ_from_the_survivor() -> None:
    # a ~ b and b ~ c by their vectors, but a and c are far apart: c stays out of a's group.
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    c = np.array([np.cos(0.6), np.sin(0.6), 0.0])
    texts = ["alpha beta gamma delta", "alpha beta gamma delta epsilon", "alpha beta gamma delta zeta"]
    groups = find_duplicates(["01a", "01b", "01c"], texts, np.stack([a, b, c]), similarity=0.95)
    assert [(g.survivor, g.duplicates) for g in groups] == [("01a", ["01b"])]


def test_lsh_finds_planted_duplicates_in_a_large_set() -> None:
    rng = np.random.default_rng(1)
    n, planted = 6000, 200
    vectors = rng.standard_normal((n, 64)).astype(np.float32)
    texts = [f"memory number {i} about topic {i % 97}" for i in range(n)]
    ids = [f"01m{i:06d}" for i in range(n)]
    originals = rng.choice(n, planted, replace=False)
    for k, o in enumerate(originals):  # a near copy: a little noise, the same words plus one
        noise = rng.standard_normal(64).astype(np.float32)
        vectors = np.vstack([vectors, vectors[o] + 0.15 * np.linalg.norm(vectors[o]) * noise / np.linalg.norm(noise)])
        texts.append(texts[o] + " indeed")
        ids.append(f"01z{k:06d}")
    groups = find_duplicates(ids, texts, vectors, similarity=0.95, text_similarity=0.6)
    found = {(g.survivor, d) for g in groups for d in g.duplicates}
    truth = {(ids[o], f"01z{k:06d}") for k, o in enumerate(originals)}
    assert len(found & truth) >= 0.95 * planted  # LSH misses a few at most
    assert found <= truth  # and merges nothing else
