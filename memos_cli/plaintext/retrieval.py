"""Recall: filters and the hybrid ranking of plaintext units.

Two retrievers run over the same filtered rows of the ``units`` table:
Lance's native full-text search (BM25 over stemmed, lower-cased words, with
accents folded and Chinese, Japanese and Korean cut into character pairs:
see ``terms``) and vector search (cosine similarity of the query's
embedding), each returning a pool of ``max(50, 3k)`` candidates. Each
retriever's scores are min-max normalised over its pool (the best gets 1,
the worst 0), and the two are mixed convexly ("relative score fusion"):

    score(unit) = WEIGHT_TEXT * bm25_norm + WEIGHT_VECTOR * cosine_norm

where a unit missing from a pool gets 0 from that retriever. Unlike rank
fusion (RRF), this keeps how far ahead a candidate is: a unit that matches
the query's rare words far better than the rest stays on top. On the LoCoMo
development split (R@10) BM25 alone gave 0.622, vector alone 0.503, RRF
(k=60) of the two 0.60-0.61, and this fusion 0.68-0.70 for vector weights
0.35-0.5 and pools of 30-100; we take the middle of that plateau.

Superseded facts: a unit whose validity has closed (``valid_to`` in the past,
set by ``memos consolidate`` when a newer fact about the same subject came)
has its score scaled by ``CLOSED_WEIGHT``, so the current fact ranks first
and "what was it before" still finds the old one.

Context (``attach_context``): a hit that is one turn of a conversation is
often only half of what answers a question ("Did you go?" / "Yes, in May").
The turns of one conversation are ``episode`` units of one cube with the same
``time``, given when they were remembered (the session's; a time that
defaulted to the moment of remembering marks no session), in id order (the
order they were remembered in).
After ranking, each such hit brings its neighbours in that thread:

- a hit among the best ``CONTEXT_BOTH`` brings the turn before and the turn after;
- a lower hit that asks a question (its text has a "?") brings the turn after,
  where the answer usually is;
- a neighbour that is a better-ranked result, or already brought by a better
  hit, is not repeated (lower results do not count, so the top k of a longer
  list is that of a list of k); neighbours obey the same filters as the hits.

The result's text is then the passage (turns in order), its sources include
the neighbours', and ``context`` names them. On the LoCoMo development split
this raised R@10 from 0.710 to 0.811 for about twice the characters read
(C@10 1,564 -> 3,038, against the 3,200 allowed); both neighbours for every
hit gave 0.81 for 4.1k characters, the next turn alone 0.79 for 2.9k, both
for the best 5 0.811 for 3.25k. At 100k units in sessions of 30 turns the
context read adds about 8 ms to a recall (p50 12 -> 20 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memos_cli.plaintext.sql import sql_str, sql_time
from memos_cli.plaintext.table import FTS_COLUMN, VECTOR_NPROBES, from_row
from memos_cli.plaintext.terms import query_terms
from memos_cli.plaintext.units import MemoryUnit, check_name, check_pinned

WEIGHT_TEXT = 0.6
WEIGHT_VECTOR = 0.4
CANDIDATES_MIN = 50  # each retriever's pool holds at least this many
CLOSED_WEIGHT = 0.5  # the score of a superseded fact (valid_to passed) is scaled by this


@dataclass
class Filters:
    """What recall and list may return. ``None`` means no constraint."""

    kind: str | None = None
    tags: list[str] = field(default_factory=list)  # all of them
    cube: str | None = None
    user: str | None = None
    since: datetime | None = None  # on the unit's ``time``
    until: datetime | None = None
    status: str | None = "active"
    pinned: bool | None = None  # True: only pinned units; False: only units not pinned

    def __post_init__(self) -> None:
        for name in ("kind", "cube", "user"):
            value = getattr(self, name)
            if value is not None:
                check_name(value, name)
        if self.pinned is not None:
            check_pinned(self.pinned)

    def sql(self, now: datetime | None = None) -> str | None:
        """A LanceDB (DataFusion SQL) filter; ``now`` also hides expired units."""
        parts = []
        if self.status:
            parts.append(f"status = {sql_str(self.status)}")
        if self.kind:
            parts.append(f"kind = {sql_str(self.kind)}")
        if self.cube:
            parts.append(f"cube = {sql_str(self.cube)}")
        if self.user:
            parts.append(f"user = {sql_str(self.user)}")
        if self.pinned is not None:
            parts.append(f"pinned = {'true' if self.pinned else 'false'}")
        if self.tags:
            parts.append("array_has_all(tags, [" + ", ".join(sql_str(t) for t in self.tags) + "])")
        if self.since:
            parts.append(f"time >= {sql_time(self.since)}")
        if self.until:
            parts.append(f"time < {sql_time(self.until)}")
        if now is not None:
            parts.append(f"(expires_at IS NULL OR expires_at > {sql_time(now)})")
        return " AND ".join(parts) or None


CONTEXT_BOTH = 4  # hits ranked this high bring the turn before and the turn after them


@dataclass
class Hit:
    unit: MemoryUnit
    score: float
    signals: dict[str, Any]
    before: list[MemoryUnit] = field(default_factory=list)  # context: turns before it, in order
    after: list[MemoryUnit] = field(default_factory=list)  # context: turns after it
    context_reason: str = ""

    @property
    def text(self) -> str:
        """The passage: the hit with its context turns, in order."""
        return "\n".join(u.text for u in (*self.before, self.unit, *self.after))

    def explain(self) -> dict[str, Any]:
        """The signals that ranked it, and why it brought the context it did."""
        sig = self.signals
        return {
            "score": round(self.score, 6),
            "text": {"rank": sig.get("text_rank"), "bm25": sig.get("bm25"), "norm": sig.get("text_norm", 0.0),
                     "weight": WEIGHT_TEXT},
            "vector": {"rank": sig.get("vector_rank"), "cosine": sig.get("cosine"), "norm": sig.get("vector_norm", 0.0),
                       "weight": WEIGHT_VECTOR},
            "context": self.context_reason or None,
            "closed": {"valid_to": sig["closed"], "weight": CLOSED_WEIGHT} if "closed" in sig else None,
        }

    def to_json(self, explain: bool = False) -> dict[str, Any]:
        u = self.unit.to_json()
        context = [*self.before, *self.after]
        out = {
            "id": u["id"],
            "text": self.text,
            "score": round(self.score, 6),
            "kind": u["kind"],
            "tags": u["tags"],
            "time": u["time"],
            "meta": u["meta"],
            # the passage is derived from its context turns too
            "sources": u["sources"] + [c.meta for c in context if c.meta],
            "cube": u["cube"],
            "user": u["user"],
            "context": [c.id for c in context],
        }
        if explain:
            out["explain"] = self.explain()
        return out


def wants_context(hit: Hit, rank: int) -> tuple[bool, bool, str]:
    """(the turn before?, the turn after?, why) for the hit at 0-based ``rank``."""
    unit = hit.unit
    if unit.kind != "episode" or unit.time is None or unit.time == unit.created_at:
        return False, False, ""  # not a turn, or no session time given (it defaulted to when it was remembered)
    if rank < CONTEXT_BOTH:
        return True, True, f"a top-{CONTEXT_BOTH} hit: the turns before and after it"
    if "?" in unit.text:
        return False, True, "it asks a question: the turn after it"
    return False, False, ""


def attach_context(ds: Any, hits: list[Hit], where: str | None) -> None:
    """Give episode hits their neighbouring turns (see the module's docstring).

    Two reads whatever the size of a thread: the ids of the threads' turns
    (three small columns), then the neighbours' rows by row id.
    """
    import pyarrow.compute as pc

    wanted = [(hit, *wants_context(hit, rank)) for rank, hit in enumerate(hits)]
    threads = {(h.unit.cube, h.unit.time) for h, before, after, _ in wanted if before or after}
    if not threads:
        return
    same = " OR ".join(f"(cube = {sql_str(cube)} AND time = {sql_time(when)})" for cube, when in sorted(threads))
    scope = f"kind = 'episode' AND ({same})" + (f" AND ({where})" if where else "")
    # Kept in Arrow: a thread can be large (thousands of turns imported with one
    # time), and Python objects for 20k rows cost 20 times the scan.
    index = ds.to_table(columns=["id", "cube", "time"], filter=scope, with_row_id=True)
    index = index.sort_by([("cube", "ascending"), ("time", "ascending"), ("id", "ascending")])  # ids sort by age
    ids, cubes, times, rowids = (index.column(c) for c in ("id", "cube", "time", "_rowid"))

    def thread(i: int) -> tuple[Any, Any]:
        return cubes[i].as_py(), times[i].as_py()

    # What a reader has seen by the time they reach a hit: the hits above it and
    # their context. Lower hits do not count, so the top k of a longer list is
    # the same as that of a list of k.
    shown: set[str] = set()
    chosen: list[tuple[Hit, list[MemoryUnit], int]] = []  # (hit, its before or after list, row id)
    for hit, before, after, why in wanted:
        shown.add(hit.unit.id)
        i = pc.index(ids, hit.unit.id).as_py() if before or after else -1
        if i < 0:
            continue
        for take, j, side in ((before, i - 1, hit.before), (after, i + 1, hit.after)):
            if take and 0 <= j < len(ids) and thread(j) == thread(i) and (uid := ids[j].as_py()) not in shown:
                shown.add(uid)
                chosen.append((hit, side, rowids[j].as_py()))
                hit.context_reason = why
    if not chosen:
        return
    names = set(ds.schema.names)
    take = sorted({rowid for _, _, rowid in chosen})
    rows = ds._take_rows(take, columns=[c for c in _COLUMNS if c in names]).to_pylist()
    units = {rowid: from_row(row) for rowid, row in zip(take, rows, strict=True)}
    for _, side, rowid in chosen:
        side.append(units[rowid])


_COLUMNS = [
    "id", "text", "kind", "tags", "meta", "sources", "cube", "user", "time", "created_at",
    "importance", "access_count", "status", "pinned", "version",
]


def hybrid_search(
    ds: Any, query: str, embed: Callable[[str], np.ndarray], k: int, where: str | None
) -> list[Hit]:
    """The top ``k`` units for ``query`` in the Lance dataset ``ds``, fused from
    full-text and vector search; ``embed`` turns the query into its vector.

    Both searches return only row ids and scores; the columns of the ``k``
    winners are read afterwards in one take (at 100k units that halves the
    cost of a search, which otherwise reads every column of 2 x 50 candidates).
    """
    n = max(CANDIDATES_MIN, 3 * k)
    # The full-text search runs on a worker thread while the query is embedded
    # and the vector search runs: llama.cpp and Lance release the GIL, and this
    # saves about 4 ms of 16 at 100k units on 2 cores.
    pending_text = _worker().submit(_search, ds, where, n, full_text_query=_text_query(ds, query))
    nearest = {"column": "vector", "q": embed(query).astype(np.float32), "k": n, "metric": "cosine",
               "nprobes": VECTOR_NPROBES}
    vec = _search(ds, where, n, nearest=nearest)
    text = pending_text.result()

    signals: dict[int, dict[str, Any]] = {}
    for rank, ((rowid, bm25), norm) in enumerate(zip(text, _minmax([s for _, s in text]), strict=True), 1):
        signals[rowid] = {"text_rank": rank, "bm25": round(bm25, 4), "text_norm": norm}
    cosines = [1.0 - distance for _, distance in vec]
    for rank, ((rowid, _), cos, norm) in enumerate(zip(vec, cosines, _minmax(cosines), strict=True), 1):
        signals.setdefault(rowid, {}).update({"vector_rank": rank, "cosine": round(cos, 4), "vector_norm": norm})

    scores = {
        rowid: WEIGHT_TEXT * sig.get("text_norm", 0.0) + WEIGHT_VECTOR * sig.get("vector_norm", 0.0)
        for rowid, sig in signals.items()
    }
    if not scores:
        return []
    # A fact whose validity has closed (a newer one superseded it) ranks lower, so the
    # current fact comes first; "what was it before" still finds it.
    pool = list(scores)
    now = datetime.now(UTC)
    for rowid, closed in zip(pool, ds._take_rows(pool, columns=["valid_to"]).column("valid_to").to_pylist(),
                             strict=True):
        if closed is not None and closed <= now:
            signals[rowid]["closed"] = closed.isoformat().replace("+00:00", "Z")
            scores[rowid] *= CLOSED_WEIGHT
    best = sorted(scores, key=lambda rowid: (-scores[rowid], rowid))[:k]
    names = set(ds.schema.names)  # a table not yet rebuilt in the current format lacks "pinned"
    rows = ds._take_rows(best, columns=[c for c in _COLUMNS if c in names]).to_pylist()  # lancedb's take_row_ids, without lancedb
    return [Hit(from_row(row), scores[rowid], signals[rowid]) for rowid, row in zip(best, rows, strict=True)]


_pool: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memos-fts")
    return _pool


def _text_query(ds: Any, query: str) -> dict[str, Any]:
    """The full-text query: rewritten as the texts were for the index (accents folded, CJK in
    n-grams, see ``terms``); a table not yet rebuilt in the current format has only ``text``."""
    if FTS_COLUMN in ds.schema.names:
        return {"query": query_terms(query), "columns": [FTS_COLUMN]}
    return {"query": query, "columns": ["text"]}


def _search(ds: Any, where: str | None, n: int, **search: Any) -> list[tuple[int, float]]:
    """(row id, score) of the best ``n`` rows: BM25 for text, cosine distance for vectors."""
    score = "_score" if "full_text_query" in search else "_distance"
    # A query of only stop words or punctuation finds nothing rather than failing.
    table = ds.to_table(columns=[score], with_row_id=True, filter=where, prefilter=True, limit=n, **search)
    return list(zip(table.column("_rowid").to_pylist(), table.column(score).to_pylist(), strict=True))


def _minmax(scores: list[float]) -> list[float]:
    """Scale a pool's scores to [0, 1]; a pool of equal scores is all 1."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi - lo < 1e-12:
        return [1.0] * len(scores)
    return [round((x - lo) / (hi - lo), 6) for x in scores]
