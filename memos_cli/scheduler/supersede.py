"""Superseded facts among memory units, for the scheduler (``memos consolidate``).

A newer unit *supersedes* an older one when it states a new value for the
same subject: "My address is 12 Oak Street", later "My address is 4 Elm
Road". The scheduler closes the older unit (its ``valid_to`` becomes the
newer unit's effective time) and links the newer one to it (``supersedes``).

Which units take part: active units (``status == "active"``) of the given
kinds whose ``valid_to`` is None. A closed unit is done: it is neither closed
again nor used to close another. Two units are only ever compared when they
have the same ``cube`` and ``user``, and never when their texts are the same
once case, spacing and punctuation are set aside (those are duplicates, the
job of ``scheduler.dedupe``).

**The rule judge** (``find_superseded``). Two such units are about the same
subject when either

1. both have ``meta["subject"]`` (a string) and these are equal once case and
   spacing are set aside: an explicit key given by the user, trusted without
   any similarity check; or
2. ``subject()`` of their texts is the same key, their embeddings have a
   cosine similarity of at least ``similarity``, and the *values* (what the
   statements say after the subject) differ. Two units that both have a
   ``meta.subject``, different ones, are never paired by rule 2: the user
   said they are about different things.

Within a group (same cube, user and key), units are taken in order of
``effective_time`` (ties broken by id, and ids sort by creation time). Each
unit closes every earlier member that is still open and that it is linked to
(for rule 1 every earlier open member; for rule 2 those at least
``similarity`` alike and with another value), so only the latest stays open,
and a chain A -> B -> C closes A by B and B by C. A newer unit that is not
similar enough to an older one leaves it open: "I prefer tea", "I prefer
window seats", "I prefer coffee" closes tea by coffee and leaves window seats
alone. A unit is compared with at most the ``WINDOW`` newest open members of
its group, so a huge group (thousands of "I prefer ...") stays linear. A unit
closed by both rules is closed once, by the earliest unit that closes it.

**The subject of a statement** (``subject``), deliberately conservative:
false positives close true facts, misses only leave an old fact open. Only the
first sentence counts; a question gives None, and so does a statement in the
past tense ("was", "were": it says nothing about now). Words are the
case-folded ``\\w+`` runs of ``dedupe.normalise`` ("Alice's" is "alice s"),
with "favorite"/"color" spelled "favourite"/"colour". Three forms, tried in
this order:

- a label: ``Home address: 4 Elm Road`` or ``wifi password = hunter2`` gives
  "home address" (1 to 5 words before the ":" or "="; a generic label such
  as "Note:" or "Update:" is set aside and the rest is read instead);
- a one-valued state verb: ``<who> lives in X`` (also "live in", "living
  in", "moved to", "relocated to"), ``<who> works at/for X``,
  ``<who> prefers X`` give "alice|lives", "i|works", "bob|prefers". Who is
  "I", "we", a name of 1 to 3 words, or "my/our X" ("my sister|lives").
  Between who and the verb only a few auxiliaries and adverbs may stand
  ("has", "is", "now", "still", "no longer", "doesn't" ...); a negation joins
  the value ("Alice no longer lives in Lisbon" supersedes "Alice lives in
  Lisbon"). "Likes", "loves", "has", "speaks" are *not* one-valued ("I like
  tea" and "I like hiking" are both true), and "prefers" is accepted only
  because rule 2 also demands a high cosine;
- a copula: ``<subject> is/are/am <value>`` with a subject of 1 to 6 words
  that is a definite description: it starts with "my", "our" or "the", or
  holds a possessive ("Alice's favourite colour" -> "alice s favourite
  colour") or "of" ("the name of my dog"). Its last word is not a person or
  pet ("my sister is a doctor" and "my sister is married" are both true).
  When the value starts with a preposition, it joins the key: "The meeting
  is at 10" is "the meeting|at", so "The meeting is in room 4" does not
  supersede it but "The meeting is at 11" does.

Every subject needs a word that is not a pronoun or stopword, so "It is X",
"This is Y", "There is Z", "I am tired" give None. Values set aside leading
and trailing "now", "still", "currently", "anymore".

**The default similarity, 0.68**, was set from pairs that share a subject,
with the bundled MiniLM embeddings: linked are "Bob works at Google" ->
"... Microsoft" (0.69), "Carol lives in Paris" -> "... in Tokyo with her
husband" (0.74), a favourite colour (0.78), a phone number (0.97); left open
are "Alice prefers tea" / "... window seats" (0.66) and "Bob works at Google"
/ "... at night" (0.58). "I live in Lisbon" -> "I moved to Porto" (0.61) is
missed: a ``meta.subject`` on both links it whatever their cosine.

**For the LLM judge** (``candidate_pairs``, ``judge_prompt``,
``parse_verdict``): pairs to put to the chat model, at most ``limit``. First
the pairs of units that share a subject key (rule 1, whatever their cosine,
or ``subject()`` and at least ``similarity`` alike with another value), each
newer unit with at most ``PER_NEWER`` of the ``CANDIDATE_WINDOW`` earlier
members of its group, best cosine first; then, to fill up to ``limit``, the
nearest other pairs of the same cube and user at or above ``similarity``, best
first: all pairs blockwise up to ``dedupe.EXACT_MAX`` units per user, else within
random-hyperplane LSH buckets (as in ``scheduler.dedupe``), near-linear but finding
only part of the pairs at cosine 0.75. Unlike ``find_superseded``, nothing is
closed while pairing, so an older unit may appear in several pairs: the
caller asks the model about each and should close each older unit at most
once (by the earliest newer unit judged to replace it). A small base model
is a weak judge (Gemma 3 270M answers 8 of 12 hand-made pairs right with
this prompt, and leans to "No"), so ``judge = "rules"`` stays the default.

Pure: no store I/O, deterministic (the LSH seed is fixed).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from memos_cli.plaintext.units import MemoryUnit, is_unit_id
from memos_cli.scheduler.dedupe import EXACT_MAX, _buckets, normalise
from memos_cli.scheduler.subject import statement
from memos_cli.store.policy import SupersededPolicy

# The defaults of [consolidate.superseded] in memos.toml (one place for them).
SIMILARITY = SupersededPolicy.similarity
KINDS: tuple[str, ...] = SupersededPolicy.kinds
WINDOW = 256  # a unit is compared with at most this many open earlier members of its group
LIMIT = 200  # candidate pairs for the LLM judge
PER_NEWER = 4  # candidate pairs of one newer unit within a subject group, at most
CANDIDATE_WINDOW = 64  # ... among this many earlier members of its group
LSH_TABLES = 6
LSH_BITS = 10
LSH_MAX_BUCKET = 256

@dataclass(frozen=True)
class Supersession:
    """An older unit that a newer one replaces, and why."""

    older: str  # unit id whose validity closes
    newer: str  # unit id that replaces it
    closes_at: datetime  # the newer unit's effective time (becomes older.valid_to)
    reason: str  # 'same subject "my address" (cosine 0.86)' or 'same meta.subject "address"'


# ---- times --------------------------------------------------------------------------

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def effective_time(unit: MemoryUnit) -> datetime:
    """When a unit's statement took effect: ``valid_from``, else ``time``, else ``created_at``, else the
    time in its id. Always with a zone (a naive time is taken as UTC)."""
    when = unit.valid_from or unit.time or unit.created_at
    if when is None:
        if not is_unit_id(unit.id):
            return _EPOCH
        ms = 0
        for char in unit.id[:10]:
            ms = ms * 32 + _B32.index(char)
        return datetime.fromtimestamp(ms / 1000, UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ---- the rule judge -------------------------------------------------------------------------


def meta_subject(unit: MemoryUnit) -> str | None:
    value = unit.meta.get("subject") if isinstance(unit.meta, dict) else None
    if not isinstance(value, str):
        return None
    return " ".join(value.casefold().split()) or None


def _eligible(units: list[MemoryUnit], kinds: Iterable[str]) -> list[int]:
    wanted = set(kinds)
    return [i for i, u in enumerate(units) if u.status == "active" and u.kind in wanted and u.valid_to is None]


def _unit_vectors(units: list[MemoryUnit], vectors: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(units):
        raise ValueError("vectors must have one row per unit")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


@dataclass
class _Groups:
    """The eligible units, in time order, grouped by meta.subject and by subject()."""

    order: list[int]  # eligible unit indices by (effective_time, id)
    meta: dict[tuple[str, str, str], list[int]]  # (cube, user, meta key) -> members in time order
    text: dict[tuple[str, str, str], list[int]]  # (cube, user, subject key) -> members in time order
    values: dict[int, str]  # unit index -> value of its statement (units with a subject key)
    norms: dict[int, str]  # unit index -> normalised text (members of a group)
    metas: dict[int, str]  # unit index -> meta key


def _groups(units: list[MemoryUnit], kinds: Iterable[str]) -> _Groups:
    times = {i: effective_time(units[i]) for i in _eligible(units, kinds)}
    order = sorted(times, key=lambda i: (times[i], units[i].id))
    out = _Groups(order, {}, {}, {}, {}, {})
    for i in order:
        unit = units[i]
        meta = meta_subject(unit)
        if meta is not None:
            out.metas[i] = meta
            out.meta.setdefault((unit.cube, unit.user, meta), []).append(i)
        found = statement(unit.text)
        if found is not None:
            out.values[i] = found[1]
            out.text.setdefault((unit.cube, unit.user, found[0]), []).append(i)
    for groups in (out.meta, out.text):
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    out.norms.setdefault(i, normalise(units[i].text))
    return out


def _links(members: list[int], vecs: np.ndarray, g: _Groups, similarity: float | None, *, close: bool = True,
           per_newer: int | None = None, window: int = WINDOW) -> Iterator[tuple[int, int, float]]:
    """(older, newer, cosine) links within one group, newer units in time order.

    Each unit is compared with the ``window`` newest open earlier members. With ``similarity`` None
    (rule 1) it links to all of them; otherwise (rule 2) to those at least that alike and with
    another value. With ``close``, a linked older member is closed and never linked again; without
    (candidates for the LLM judge), each unit links to at most its ``per_newer`` most alike."""
    open_: list[int] = []
    for b in members:
        near = open_[-window:]
        if near:
            cosines = vecs[near] @ vecs[b]
            hits = np.arange(len(near)) if similarity is None else np.flatnonzero(cosines >= similarity)
            if per_newer is not None:  # the most alike first, and stop at per_newer
                hits = hits[np.argsort(-cosines[hits], kind="stable")]
            found: list[tuple[int, float]] = []
            for h in hits.tolist():
                if per_newer is not None and len(found) == per_newer:
                    break
                a = near[h]
                if g.norms[a] == g.norms[b]:
                    continue  # duplicates: scheduler.dedupe's job
                if similarity is not None:
                    if g.values[a] == g.values[b]:
                        continue  # the same value said otherwise
                    if a in g.metas and b in g.metas and g.metas[a] != g.metas[b]:
                        continue  # the user keyed them apart
                found.append((a, float(cosines[h])))
            for a, cos in found:
                yield a, b, cos
            if close and found:
                closed = {a for a, _ in found}
                open_ = [a for a in open_ if a not in closed]
        open_.append(b)


def find_superseded(units: list[MemoryUnit], vectors: np.ndarray, *, similarity: float = SIMILARITY,
                    kinds: Iterable[str] = KINDS) -> list[Supersession]:
    """The older units that newer ones replace (``vectors``: one row per unit), by newer id then older id."""
    vecs = _unit_vectors(units, vectors)
    g = _groups(units, kinds)
    rank = {i: r for r, i in enumerate(g.order)}
    best: dict[int, tuple[int, str]] = {}  # older -> (its earliest closer, reason)

    def offer(a: int, b: int, reason: str) -> None:
        if a not in best or rank[b] < rank[best[a][0]]:
            best[a] = (b, reason)

    for (_, _, key), members in g.meta.items():
        if len(members) > 1:
            for a, b, _cos in _links(members, vecs, g, None):
                offer(a, b, f'same meta.subject "{key}"')
    for (_, _, key), members in g.text.items():
        if len(members) > 1:
            for a, b, cos in _links(members, vecs, g, similarity):
                offer(a, b, f'same subject "{key}" (cosine {cos:.2f})')
    found = [Supersession(units[a].id, units[b].id, effective_time(units[b]), reason)
             for a, (b, reason) in best.items()]
    return sorted(found, key=lambda s: (s.newer, s.older))


# ---- for the LLM judge ----------------------------------------------------------------------


def candidate_pairs(units: list[MemoryUnit], vectors: np.ndarray, *, similarity: float = SIMILARITY,
                    kinds: Iterable[str] = KINDS, limit: int = LIMIT) -> list[tuple[str, str, float]]:
    """(older id, newer id, cosine) pairs to put to the LLM judge, at most ``limit``: pairs that share a
    subject first, then the nearest other pairs; each part best cosine first."""
    if limit <= 0:
        return []
    vecs = _unit_vectors(units, vectors)
    g = _groups(units, kinds)
    rank = {i: r for r, i in enumerate(g.order)}
    ids = [u.id for u in units]

    shared: dict[tuple[int, int], float] = {}
    for members in g.meta.values():
        if len(members) > 1:
            for a, b, cos in _links(members, vecs, g, None, close=False, per_newer=PER_NEWER, window=CANDIDATE_WINDOW):
                shared[(a, b)] = cos
    for members in g.text.values():
        if len(members) > 1:
            for a, b, cos in _links(members, vecs, g, similarity, close=False, per_newer=PER_NEWER, window=CANDIDATE_WINDOW):
                shared[(a, b)] = cos
    out = _best(shared, ids, limit)
    if len(out) >= limit:
        return out

    by_owner: dict[tuple[str, str], list[int]] = {}
    for i in g.order:
        by_owner.setdefault((units[i].cube, units[i].user), []).append(i)
    near: dict[tuple[int, int], float] = {}
    texts: dict[int, str] = {}
    for members in by_owner.values():
        if len(members) < 2:
            continue
        for i, j, cos in _near_pairs(vecs, np.asarray(members), similarity, 4 * limit):
            a, b = (i, j) if rank[i] < rank[j] else (j, i)
            if (a, b) in shared:
                continue
            ta = texts.setdefault(a, normalise(units[a].text))
            tb = texts.setdefault(b, normalise(units[b].text))
            if ta == tb or (a in g.metas and b in g.metas and g.metas[a] != g.metas[b]):
                continue
            near[(a, b)] = cos
    return out + _best(near, ids, limit - len(out))


def _best(pairs: dict[tuple[int, int], float], ids: list[str], limit: int) -> list[tuple[str, str, float]]:
    """The ``limit`` best pairs as ids, best cosine first, then by newer id and older id."""
    ranked = sorted(((ids[a], ids[b], cos) for (a, b), cos in pairs.items()), key=lambda p: (-p[2], p[1], p[0]))
    return ranked[:limit]


def _near_pairs(vecs: np.ndarray, members: np.ndarray, similarity: float, keep: int) -> list[tuple[int, int, float]]:
    """About the ``keep`` best pairs of ``members`` at or above ``similarity``: exact and blockwise up to
    ``EXACT_MAX`` members, else within LSH buckets (near-linear, partial recall)."""
    heap: list[tuple[float, int, int]] = []  # min-heap of the best (cosine, i, j) so far, i < j
    held: set[tuple[int, int]] = set()  # the pairs in the heap (LSH tables find a pair again)

    def consider(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray) -> None:
        r, c = np.nonzero(sims)
        if not len(r):
            return
        values = sims[r, c]
        if len(values) > keep:
            top = np.argpartition(-values, keep - 1)[:keep]
            r, c, values = r[top], c[top], values[top]
        for i, j, v in zip(rows[r].tolist(), cols[c].tolist(), values.tolist(), strict=True):
            pair = (min(i, j), max(i, j))
            if pair in held:
                continue
            if len(heap) < keep:
                heapq.heappush(heap, (v, *pair))
            elif (v, *pair) > heap[0]:
                _, *gone = heapq.heapreplace(heap, (v, *pair))
                held.discard((gone[0], gone[1]))
            else:
                continue
            held.add(pair)

    def above(block: np.ndarray, other: np.ndarray) -> np.ndarray:
        sims = vecs[block] @ vecs[other].T
        return np.where(sims >= similarity, sims, 0.0)

    if len(members) <= EXACT_MAX:
        for start in range(0, len(members), 1024):
            block, later = members[start:start + 1024], members[start:]
            sims = above(block, later)
            sims[:, :len(block)] = np.triu(sims[:, :len(block)], k=1)  # each pair once, not with itself
            consider(block, later, sims)
    else:
        rng = np.random.default_rng(0)
        for _ in range(LSH_TABLES):
            for bucket in _buckets(vecs, members, LSH_BITS, LSH_MAX_BUCKET, rng):
                if len(bucket) > 1:
                    consider(bucket, bucket, np.triu(above(bucket, bucket), k=1))
    return [(i, j, v) for v, i, j in heap]


_EXAMPLES = (
    ("My address is 12 Oak Street.", "I moved: my address is now 4 Elm Road.", "Yes"),
    ("I like tea.", "I like hiking.", "No"),
    ("Alice lives in Lisbon.", "Alice moved to Porto last month.", "Yes"),
    ("Bob works at Acme.", "Bob has two cats.", "No"),
    ("The standup is at 10:00.", "The standup moved to 11:00.", "Yes"),
    ("My favourite colour is green.", "My car is green.", "No"),
    ("My phone number is 555-0101.", "My email is sam@example.com.", "No"),
)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def judge_prompt(older: str, newer: str) -> str:
    """A few-shot prompt for a small base model: the next word is "Yes" (the newer statement replaces the
    older one) or "No". Texts are put on one line (and cut at 400 characters)."""
    lines = ["Does the newer memory replace the older one (the same thing, with a new value)?", ""]
    for a, b, verdict in _EXAMPLES:
        lines += [f"Older: {a}", f"Newer: {b}", f"Replaces: {verdict}", ""]
    lines += [f"Older: {_one_line(older)}", f"Newer: {_one_line(newer)}", "Replaces:"]
    return "\n".join(lines)


_VERDICT = re.compile(r"^\W*(\w+)")


def parse_verdict(text: str) -> bool | None:
    """The model's answer: True for "Yes", False for "No" (any case, spacing, punctuation), else None."""
    match = _VERDICT.match(text or "")
    word = match.group(1).casefold() if match else ""
    return True if word == "yes" else False if word == "no" else None
