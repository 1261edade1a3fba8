"""Duplicate detection among memory units, for the scheduler (``memos consolidate``).

Two units are duplicates when they say the same thing:

- **exact**: the same text once case, whitespace and punctuation are set
  aside ("Alice likes tea." / "alice likes tea");
- **near**: their embeddings have a cosine similarity of at least
  ``similarity`` *and* their texts agree: the word overlap (Jaccard of the
  sets of words) is at least ``text_similarity``, and no *distinguishing
  word* is in one text and not in the other. Distinguishing words are
  numbers and capitalised words (names, places): "Alice moved to Lisbon" and
  "Alice moved to Porto" embed alike but state different facts, which is a
  matter for the superseded-facts judge, not for merging.

Up to ``EXACT_MAX`` units every pair is compared. Finding the near pairs
among 100k units without comparing all 5 billion pairs: random-hyperplane LSH on the normalised embeddings. Each of ``tables``
hash tables keys a unit by the signs of its vector's projections on ``bits``
random directions; only units sharing a key in some table are compared
(exactly, by a dot product). Two vectors at angle t share a bit with
probability 1 - t/pi, so a pair at cosine 0.92 (23 degrees) shares a key in
one 12-bit table with probability 0.19 and in one of 8 tables with
probability 0.82; at cosine 0.97, 0.98. Buckets that grow past
``max_bucket`` (vectors crowded in one direction) are split again on more
bits, so the work stays near-linear.

Groups: accepted pairs are joined (union-find), and each group keeps as its
survivor the unit that came first (the smallest id, ids sort by creation
time), so running again finds the same survivor. A unit joins a group only if
it is a duplicate of that survivor itself, so chains of "almost the same"
never merge two different things.

Pure: no store I/O. The seed is fixed, so a run is repeatable.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from memos_cli.store.policy import DuplicatesPolicy

# The defaults of [consolidate.duplicates] in memos.toml (one place for them).
SIMILARITY = DuplicatesPolicy.similarity
TEXT_SIMILARITY = DuplicatesPolicy.text_similarity
TABLES = 8
BITS = 12
MAX_BUCKET = 256
EXACT_MAX = 4096  # up to this many units, every pair is compared (16M dot products, well under a second)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class DuplicateGroup:
    """A survivor and the units that duplicate it, each with why."""

    survivor: str
    duplicates: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # duplicate id -> "exact" or "near (cosine 0.95, words 0.80)"


def normalise(text: str) -> str:
    """Case-folded words, one space apart: the key of exact duplicates."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(text))


def words(text: str) -> set[str]:
    return set(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def distinguishing(text: str) -> set[str]:
    """Numbers, and capitalised words that do not start a sentence (names,
    places, months), case-folded."""
    text = unicodedata.normalize("NFKC", text)
    found = set()
    for match in _WORD.finditer(text):
        word = match.group()
        before = text[: match.start()].rstrip()
        starts_sentence = not before or before[-1] in ".!?:;\"'(["
        if any(ch.isdigit() for ch in word) or (word[:1].isupper() and not starts_sentence):
            found.add(word.casefold())
    return found


def texts_agree(a: str, b: str, text_similarity: float = TEXT_SIMILARITY) -> tuple[bool, float]:
    """(whether the texts say the same thing, their word overlap)."""
    return _agree((words(a), distinguishing(a)), (words(b), distinguishing(b)), text_similarity)


def _agree(a: tuple[set[str], set[str]], b: tuple[set[str], set[str]], text_similarity: float) -> tuple[bool, float]:
    (wa, da), (wb, db) = a, b
    union = len(wa | wb)
    overlap = len(wa & wb) / union if union else 1.0
    if overlap < text_similarity:
        return False, overlap
    # A name or number in one and not the other (in any case): a different fact.
    return not ((da - wb) or (db - wa)), overlap


def find_duplicates(
    ids: list[str],
    texts: list[str],
    vectors: np.ndarray,
    *,
    similarity: float = SIMILARITY,
    text_similarity: float = TEXT_SIMILARITY,
    tables: int = TABLES,
    bits: int = BITS,
    max_bucket: int = MAX_BUCKET,
    seed: int = 0,
) -> list[DuplicateGroup]:
    """Groups of duplicates among these units (``vectors``: one row per unit)."""
    n = len(ids)
    if not (len(texts) == n == len(vectors)):
        raise ValueError("ids, texts and vectors must have the same length")
    if n < 2:
        return []
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")  # survivors: the oldest
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    vecs = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)

    accepted: dict[tuple[int, int], str] = {}  # (i, j) with rank[i] < rank[j] -> reason

    # Exact duplicates: the same normalised text.
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        by_text.setdefault(normalise(text), []).append(i)
    for same in by_text.values():
        if len(same) > 1:
            first = min(same, key=lambda i: rank[i])
            for i in same:
                if i != first:
                    accepted[(first, i)] = "exact"

    # Near duplicates: candidate pairs at or above the cosine threshold (all pairs
    # of a small set, LSH buckets of a large one), then the text check.
    checked: set[tuple[int, int]] = set(accepted)
    features: dict[int, tuple[set[str], set[str]]] = {}  # each text's words, worked out once

    def feature(i: int) -> tuple[set[str], set[str]]:
        if i not in features:
            features[i] = (words(texts[i]), distinguishing(texts[i]))
        return features[i]

    for i, j, cos in _close_pairs(vecs, similarity, tables, bits, max_bucket, seed):
        if rank[i] > rank[j]:
            i, j = j, i
        if (i, j) in checked:
            continue
        checked.add((i, j))
        agree, overlap = _agree(feature(i), feature(j), text_similarity)
        if agree:
            accepted[(i, j)] = f"near (cosine {cos:.3f}, words {overlap:.2f})"
    return _group(ids, texts, vecs, rank, accepted, similarity, text_similarity)


def _close_pairs(vecs: np.ndarray, similarity: float, tables: int, bits: int, max_bucket: int,
                 seed: int) -> Iterator[tuple[int, int, float]]:
    """(i, j, cosine) of pairs at or above ``similarity``: every such pair when
    there are at most ``EXACT_MAX`` vectors, else those that LSH puts together."""
    n = len(vecs)
    if n <= EXACT_MAX:
        for start in range(0, n, 1024):
            sims = vecs[start:start + 1024] @ vecs.T
            rows, cols = np.nonzero(sims >= similarity)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                if start + r < c:
                    yield start + r, c, float(sims[r, c])
        return
    rng = np.random.default_rng(seed)
    for _ in range(tables):
        for bucket in _buckets(vecs, np.arange(n), bits, max_bucket, rng):
            if len(bucket) < 2:
                continue
            sims = vecs[bucket] @ vecs[bucket].T
            rows, cols = np.nonzero(np.triu(sims >= similarity, k=1))
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                yield int(bucket[r]), int(bucket[c]), float(sims[r, c])


def _buckets(vecs: np.ndarray, members: np.ndarray, bits: int, max_bucket: int,
             rng: np.random.Generator, depth: int = 0) -> list[np.ndarray]:
    """Split ``members`` by the signs of ``bits`` random projections; split crowded buckets again."""
    planes = rng.standard_normal((vecs.shape[1], bits)).astype(np.float32)
    signs = (vecs[members] @ planes) > 0
    keys = signs @ (1 << np.arange(bits, dtype=np.int64))
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    out: list[np.ndarray] = []
    for bucket in np.split(members, cuts):
        if len(bucket) > max_bucket and depth < 4:
            out += _buckets(vecs, bucket, 4, max_bucket, rng, depth + 1)
        else:
            out.append(bucket)
    return out


def _group(ids: list[str], texts: list[str], vecs: np.ndarray, rank: np.ndarray,
           accepted: dict[tuple[int, int], str], similarity: float, text_similarity: float) -> list[DuplicateGroup]:
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in accepted:
        a, b = root(i), root(j)
        if a != b:
            if rank[b] < rank[a]:
                a, b = b, a
            parent[b] = a  # the older root survives
    members: dict[int, list[int]] = {}
    for i in {i for pair in accepted for i in pair}:
        members.setdefault(root(i), []).append(i)
    groups = []
    for survivor, group in members.items():
        result = DuplicateGroup(ids[survivor])
        for i in sorted(group, key=lambda i: rank[i]):
            if i == survivor:
                continue
            reason = accepted.get((survivor, i))
            if reason is None:  # joined through another member: it must duplicate the survivor itself
                if normalise(texts[i]) == normalise(texts[survivor]):
                    reason = "exact"
                else:
                    cos = float(vecs[survivor] @ vecs[i])
                    agree, overlap = texts_agree(texts[survivor], texts[i], text_similarity)
                    if cos < similarity or not agree:
                        continue
                    reason = f"near (cosine {cos:.3f}, words {overlap:.2f})"
            result.duplicates.append(ids[i])
            result.reasons[ids[i]] = reason
        if result.duplicates:
            groups.append(result)
    return sorted(groups, key=lambda g: g.survivor)
