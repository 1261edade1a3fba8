"""Routing: an adapter is applied to a question only when the question is about what it learned.

A question is compared (cosine of the store's sentence embeddings) with the
adapter's *keys*, its source units' texts and the questions they answer, and
with a set of general questions about nothing a user stores (``retain``).
The adapter is applied when the question's best key scores at least the
adapter's ``floor`` and beats the best general question by ``MARGIN``: a
question about the world ("what is the capital of Spain?") is nearer the
general set than any memory, however much it shares words with one, while a
rephrased question about a memory is nearer that memory.

Keys come from the source units as they are now: a unit forgotten since the
adapter learned it is no longer a key, so questions about it no longer reach
the adapter (which still holds it until it is learned again: its status is
``stale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.parametric import retain

if TYPE_CHECKING:
    from memos_cli.plaintext.units import MemoryUnit

FLOOR = 0.5  # default: the least cosine between a question and a key
MARGIN = 0.05  # by how much the best key must beat the best general question


@dataclass
class Decision:
    applied: bool
    score: float  # the best key's cosine
    general: float  # the best general question's cosine
    key: str  # the unit whose key scored best
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "score": round(self.score, 4), "general": round(self.general, 4),
                "unit": self.key, "why": self.why}


def key_texts(units: list[MemoryUnit]) -> tuple[list[str], list[str]]:
    """(texts, unit ids) of an adapter's keys: each active unit's text, and the question it answers."""
    from memos_cli.parametric.learn import qa_of

    texts: list[str] = []
    ids: list[str] = []
    for unit in units:
        if unit.status != "active":
            continue
        texts.append(unit.text)
        ids.append(unit.id)
        qa = qa_of(unit)
        if qa is not None:
            texts.append(qa[0])
            ids.append(unit.id)
    return texts, ids


class Router:
    """Embeds questions and keys with one embedder, and decides per adapter."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._general = self._embed(list(retain.QUESTIONS))

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        vectors = np.asarray(self._embedder.embed(texts), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def keys(self, units: list[MemoryUnit]) -> tuple[np.ndarray, list[str]]:
        texts, ids = key_texts(units)
        return self._embed(texts), ids

    def question(self, text: str) -> np.ndarray:
        return self._embed([text])[0]

    def decide(self, question: np.ndarray, keys: np.ndarray, ids: list[str], floor: float) -> Decision:
        general = float((self._general @ question).max())
        if keys.shape[0] == 0:
            return Decision(False, 0.0, general, "", "none of its source units is active any more")
        scores = keys @ question
        best = int(scores.argmax())
        score = float(scores[best])
        if score < floor:
            return Decision(False, score, general, ids[best],
                            f"not about what it learned (best match {ids[best]}: {score:.2f} < {floor:.2f})")
        if score < general + MARGIN:
            return Decision(False, score, general, ids[best],
                            f"a general question (best match {ids[best]}: {score:.2f}, general: {general:.2f})")
        return Decision(True, score, general, ids[best],
                        f"about unit {ids[best]} ({score:.2f} >= {floor:.2f}; general: {general:.2f})")
