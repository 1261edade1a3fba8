"""Routing of adapters: the floor on the best key, and the margin over the general questions."""

from __future__ import annotations

from memos_cli.parametric.routing import FLOOR, Router
from memos_cli.plaintext.units import MemoryUnit


def test_a_question_reaches_an_adapter_only_above_the_floor_and_the_general_questions(embedder) -> None:
    router = Router(embedder)
    unit = MemoryUnit(id="u1", text="I play the bassoon.", meta={"question": "What instrument do I play?",
                                                                   "answer": "bassoon"})
    keys, ids = router.keys([unit])
    assert ids == ["u1", "u1"]  # its text and its question

    about = router.decide(router.question("Which instrument do I play?"), keys, ids, FLOOR)
    assert about.applied and about.key == "u1"

    # Near the memory (above the floor), but nearer a general question: the margin keeps it out.
    general = router.decide(router.question("Name a musical instrument."), keys, ids, FLOOR)
    assert general.score >= FLOOR and not general.applied and "general question" in general.why

    # Far from everything: the floor keeps it out.
    far = router.decide(router.question("How do volcanoes form?"), keys, ids, FLOOR)
    assert far.score < FLOOR and not far.applied and "not about what it learned" in far.why

    # A forgotten source is no key.
    keys, ids = router.keys([MemoryUnit(id="u1", text="I play the bassoon.", status="deleted")])
    assert not router.decide(router.question("Which instrument do I play?"), keys, ids, FLOOR).applied
