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

Relevance in the ranking: that fused score is scaled per query, so in a
small pool a word every candidate shares ("Alice") can decide the order by
the candidates' lengths alone. The best ``max(20, 2k)`` candidates by it
therefore get their own relevance (``relevance``: the unit's cosine with the
query and the share of the query's words it holds, calibrated to mean the
same in any query), and are ranked by

    score = (fused + WEIGHT_RELEVANCE * relevance) / (1 + WEIGHT_RELEVANCE)

so a clearly relevant unit comes before a weak one, and among the clearly
relevant the fused score decides. On the development split this moved 23
questions' R@10: 15 up, 8 down (0.806 -> 0.796 overall; open-domain +0.03,
single-hop -0.02): within what three conversations can tell. It puts "Alice
moved to Lisbon" first for "Where does Alice live?" in ``memos demo``, which
the fused score ranked third behind two units that share only "Alice", and
it raised the top result's AUROC (answerable or not) from 0.984 to 0.990.
Weights 0.5 and 1 gave R@10 0.800 and 0.798 and leave the demo wrong.

Live units: recall's filter always asks for active units that have not
expired (``Live``). Lance evaluates a filter by reading its columns for
every row, which at 100k units doubled the cost of each search, so the two
searches run with the rest of the filter only, ask for twice their pool,
and the live part is applied to the candidates (``_Lives``; a search whose
candidates were mostly dead is run again with the whole filter). A process
that recalls more than once from a version of the table keeps a
``RowIndex`` of its small columns: the candidates' life, the turns of a
hit's conversation, and the short fields of the units come from it, and the
hits and their context are read from Lance in one take. At 100k units this
took the in-process recall from p50 45.7 ms to 30.4 ms, relevance included
(``bench_recall.py --against``: the previous code measured in turns with this).

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
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.plaintext.sql import sql_str, sql_time
from memos_cli.plaintext.table import FTS_COLUMN, VECTOR_NPROBES, from_row
from memos_cli.plaintext.terms import query_terms
from memos_cli.plaintext.units import MemoryUnit, check_name, check_pinned

if TYPE_CHECKING:
    from memos_cli.plaintext.rowindex import RowIndex

WEIGHT_TEXT = 0.6
WEIGHT_VECTOR = 0.4
CANDIDATES_MIN = 50  # each retriever's pool holds at least this many
CLOSED_WEIGHT = 0.5  # the score of a superseded fact (valid_to passed) is scaled by this
WEIGHT_RELEVANCE = 2.0  # the best candidates' own relevance, mixed into their score
RERANK_MIN, RERANK_TIMES = 20, 2  # how many candidates get it: the best max(20, 2k) by the fused score


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
        parts = [self.live(now).sql()] if self.status or now is not None else []
        narrow = self.narrow_sql()
        return " AND ".join(p for p in (*parts, narrow) if p) or None

    def live(self, now: datetime | None) -> Live:
        """The part of the filter about a unit's life: its status, and not expired at ``now``."""
        return Live(self.status, now)

    def narrow_sql(self, cube: bool = True) -> str | None:
        """The filter without its ``live`` part: kind, cube (unless not ``cube``), user, pinned, tags,
        time range."""
        parts = []
        if self.kind:
            parts.append(f"kind = {sql_str(self.kind)}")
        if self.cube and cube:
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
        return " AND ".join(parts) or None


@dataclass(frozen=True)
class Live:
    """Which units are alive for a read: of this status (None: any), not expired at ``now`` (None: never mind).

    Nearly every unit of a store usually is, and a search that Lance must
    filter by these two columns reads them for every row (at 100k units that
    doubled the cost of each search), so recall searches without them and
    drops what they exclude from the candidates (``hybrid_search``).
    """

    status: str | None
    now: datetime | None

    def sql(self) -> str | None:
        parts = []
        if self.status:
            parts.append(f"status = {sql_str(self.status)}")
        if self.now is not None:
            parts.append(f"(expires_at IS NULL OR expires_at > {sql_time(self.now)})")
        return " AND ".join(parts) or None

    def mask(self, table: Any) -> Any:
        """Which rows of an Arrow table (with ``status`` and ``expires_at``) it keeps."""
        import pyarrow as pa
        import pyarrow.compute as pc

        keep = pa.array([True] * len(table))
        if self.status:
            keep = pc.and_kleene(keep, pc.equal(table.column("status"), self.status))
        if self.now is not None:  # Kleene logic: null (no expiry) or true is true
            expires = table.column("expires_at")
            keep = pc.and_kleene(keep, pc.or_kleene(pc.is_null(expires),
                                                    pc.greater(expires, pa.scalar(self.now, expires.type))))
        return pc.fill_null(keep, False)


def _and(*parts: str | None) -> str | None:
    return " AND ".join(f"({p})" for p in parts if p) or None


CONTEXT_BOTH = 4  # hits ranked this high bring the turn before and the turn after them


@dataclass
class Hit:
    unit: MemoryUnit
    score: float
    signals: dict[str, Any]
    before: list[MemoryUnit] = field(default_factory=list)  # context: turns before it, in order
    after: list[MemoryUnit] = field(default_factory=list)  # context: turns after it
    context_reason: str = ""
    cosine: float = 0.0  # of the query's embedding and the unit's own
    relevance: float | None = None  # 0 to 1, comparable across queries (``rate``); None until rated
    assessment: dict[str, Any] = field(default_factory=dict)  # how relevance was reached (``explain``)

    @property
    def text(self) -> str:
        """The passage: the hit with its context turns, in order."""
        return "\n".join(u.text for u in (*self.before, self.unit, *self.after))

    def explain(self) -> dict[str, Any]:
        """The signals that ranked it, and why it brought the context it did."""
        sig = self.signals
        return {
            "score": round(self.score, 6),
            "fused": sig.get("fused"),
            "unit_relevance": {"relevance": sig.get("unit_relevance"), "weight": WEIGHT_RELEVANCE},
            "text": {"rank": sig.get("text_rank"), "bm25": sig.get("bm25"), "norm": sig.get("text_norm", 0.0),
                     "weight": WEIGHT_TEXT},
            "vector": {"rank": sig.get("vector_rank"), "cosine": sig.get("cosine"), "norm": sig.get("vector_norm", 0.0),
                       "weight": WEIGHT_VECTOR},
            "context": self.context_reason or None,
            "closed": {"valid_to": sig["closed"], "weight": CLOSED_WEIGHT} if "closed" in sig else None,
            "relevance": self.assessment or None,
        }

    def to_json(self, explain: bool = False) -> dict[str, Any]:
        u = self.unit.to_json()
        context = [*self.before, *self.after]
        out = {
            "id": u["id"],
            "text": self.text,
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
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


def rate(query: str, hits: list[Hit], model: str | None = None) -> None:
    """Give each hit its ``relevance`` (``relevance.assess``): after ``attach_context``, since the
    words of the context turns count."""
    from memos_cli.plaintext.relevance import assess, query_words

    words = query_words(query)
    for hit in hits:
        hit.assessment = assess(words, hit.text, hit.cosine, model)
        hit.relevance = hit.assessment["relevance"]


def wants_context(hit: Hit, rank: int) -> tuple[bool, bool, str]:
    """(the turn before?, the turn after?, why) for the hit at 0-based ``rank``."""
    unit = hit.unit
    return _wants(unit.kind, unit.time, unit.created_at, "?" in unit.text, rank)


def _wants(kind: str | None, when: datetime | None, created_at: datetime | None, asks: bool,
           rank: int) -> tuple[bool, bool, str]:
    if kind != "episode" or when is None or when == created_at:
        return False, False, ""  # not a turn, or no session time given (it defaulted to when it was remembered)
    if rank < CONTEXT_BOTH:
        return True, True, f"a top-{CONTEXT_BOTH} hit: the turns before and after it"
    if asks:
        return False, True, "it asks a question: the turn after it"
    return False, False, ""


@dataclass
class _Turn:
    """What choosing a hit's context needs of it."""

    id: str
    cube: str
    time: datetime | None
    before: bool
    after: bool
    why: str


def attach_context(ds: Any, hits: list[Hit], where: str | None, live: Live | None = None,
                   index: RowIndex | None = None) -> None:
    """Give episode hits their neighbouring turns (see the module's docstring).

    Two reads whatever the size of a thread: the ids of the threads' turns
    (a few small columns, ``_threads``), then the neighbours' rows by row id.
    ``where``, ``live`` and ``index`` are as for ``_threads``. (``recall``
    with a row index reads the neighbours in the same take as the hits.)
    """
    turns = [_Turn(h.unit.id, h.unit.cube, h.unit.time, *wants_context(h, rank)) for rank, h in enumerate(hits)]
    chosen = _choose_context(turns, lambda threads: _threads(ds, threads, where, live, index))
    if not chosen:
        return
    units = _take_units(ds, sorted({rowid for _, _, rowid, _ in chosen}), index=index)
    for i, side, rowid, why in chosen:
        getattr(hits[i], side).append(units[rowid])
        hits[i].context_reason = why


def _threads(ds: Any, threads: set[tuple[str, datetime]], where: str | None, live: Live | None,
             index: RowIndex | None) -> Any:
    """The turns of these (cube, time) threads that obey the filter, sorted by thread and id: an Arrow
    table of id, cube, time and _rowid. ``where`` is the narrow filter and ``live`` its live part,
    applied to the turns after the read, which then costs a third. They come from ``index`` when
    there is one and ``where`` is None (a filter on the cube alone may be left out of ``where``: a
    thread is in its hit's cube); other cubes' turns at those times sort into threads of their own.
    """
    columns = ["id", "cube", "time"] + (["status", "expires_at"] if live else [])
    if index is not None and where is None:
        table = index.episodes_at(sorted({when for _, when in threads}), columns)
    else:
        same = " OR ".join(f"(cube = {sql_str(cube)} AND time = {sql_time(when)})" for cube, when in sorted(threads))
        scope = f"kind = 'episode' AND ({same})" + (f" AND ({where})" if where else "")
        # Kept in Arrow: a thread can be large (thousands of turns imported with one
        # time), and Python objects for 20k rows cost 20 times the scan.
        table = ds.to_table(columns=columns, filter=scope, with_row_id=True)
    if live is not None:
        table = table.filter(live.mask(table))
    return table.sort_by([("cube", "ascending"), ("time", "ascending"), ("id", "ascending")])  # ids sort by age


def _choose_context(turns: list[_Turn], threads_of: Callable[[set[tuple[str, datetime]]], Any]
                    ) -> list[tuple[int, str, int, str]]:
    """(hit's position, "before" or "after", the neighbour's row id, why) for each context turn to bring."""
    import pyarrow.compute as pc

    threads = {(t.cube, t.time) for t in turns if (t.before or t.after) and t.time is not None}
    if not threads:
        return []
    table = threads_of(threads)
    ids, cubes, times, rowids = (table.column(c) for c in ("id", "cube", "time", "_rowid"))

    def thread(i: int) -> tuple[Any, Any]:
        return cubes[i].as_py(), times[i].as_py()

    # What a reader has seen by the time they reach a hit: the hits above it and
    # their context. Lower hits do not count, so the top k of a longer list is
    # the same as that of a list of k.
    shown: set[str] = set()
    chosen: list[tuple[int, str, int, str]] = []
    for pos, turn in enumerate(turns):
        shown.add(turn.id)
        i = pc.index(ids, turn.id).as_py() if turn.before or turn.after else -1
        if i < 0:
            continue
        for take, j, side in ((turn.before, i - 1, "before"), (turn.after, i + 1, "after")):
            if take and 0 <= j < len(ids) and thread(j) == thread(i) and (uid := ids[j].as_py()) not in shown:
                shown.add(uid)
                chosen.append((pos, side, rowids[j].as_py(), turn.why))
    return chosen


def _take_units(ds: Any, rowids: list[int], index: RowIndex | None = None) -> dict[int, MemoryUnit]:
    """rowid -> MemoryUnit, in one take. The columns ``index`` holds come from it: a take from
    Lance costs by the column."""
    names = set(ds.schema.names)  # a table not yet rebuilt in the current format lacks "pinned"
    wanted = [c for c in _COLUMNS if c in names]
    small = [c for c in wanted if index is not None and c in index.columns]
    rows = ds._take_rows(rowids, columns=[c for c in wanted if c not in small]).to_pylist()  # lancedb's take_row_ids
    if index is not None and small:
        for row, more in zip(rows, index.take(rowids, small).to_pylist(), strict=True):
            row.update(more)
    return {rowid: from_row(row) for rowid, row in zip(rowids, rows, strict=True)}


_COLUMNS = [
    "id", "text", "kind", "tags", "meta", "sources", "cube", "user", "time", "created_at",
    "importance", "access_count", "status", "pinned", "version",
]


def hybrid_search(
    ds: Any, query: str, embed: Callable[[str], np.ndarray], k: int, where: str | None, live: Live | None = None,
    index: RowIndex | None = None, context: bool = False, threads_where: str | None = None,
) -> list[Hit]:
    """The top ``k`` units for ``query`` in the Lance dataset ``ds``, fused from
    full-text and vector search; ``embed`` turns the query into its vector.

    ``where`` filters the units; with ``live`` it is the narrow part of the
    filter (``Filters.narrow_sql``), and the live part is applied to the
    candidates instead of in the searches (see ``Live``): each search asks
    for twice its pool, and the first ``n`` that are alive are the pool, the
    same as a search filtered by it would give. A search whose candidates
    were mostly not alive is run again with the whole filter. ``index``, the
    table's ``RowIndex`` when it has one, answers what the candidates' life is.

    With ``context``, episode hits bring their neighbouring turns
    (``attach_context``; ``threads_where`` is the narrow filter for the
    turns, which may leave the cube out). With an ``index`` that can answer
    which turns those are, the hits and their neighbours are read in one take.

    Both searches return only row ids and scores; the columns of the ``k``
    winners are read afterwards in one take (at 100k units that halves the
    cost of a search, which otherwise reads every column of 2 x 50 candidates).
    """
    n = max(CANDIDATES_MIN, 3 * k)
    asked = n if live is None else 2 * n
    full = where if live is None else _and(live.sql(), where)
    text_query = _text_query(ds, query)
    # The full-text search runs on a worker thread while the query is embedded
    # and the vector search runs: llama.cpp and Lance release the GIL, and this
    # saves about 4 ms of 16 at 100k units on 2 cores.
    pending_text = _worker().submit(_search, ds, where, asked, full_text_query=text_query)
    qv = embed(query).astype(np.float32)

    def nearest(count: int) -> dict[str, Any]:
        return {"column": "vector", "q": qv, "k": count, "metric": "cosine", "nprobes": VECTOR_NPROBES}

    vec = _search(ds, where, asked, nearest=nearest(asked))
    text = pending_text.result()
    lives = _Lives(ds, live, index)
    if live is not None:
        text = lives.alive(text, n, asked, lambda: _search(ds, full, n, full_text_query=text_query))
        vec = lives.alive(vec, n, asked, lambda: _search(ds, full, n, nearest=nearest(n)))

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
    now = datetime.now(UTC)
    lives.read(list(scores))
    weight = {}
    for rowid in scores:
        closed = lives.info[rowid][1]
        weight[rowid] = CLOSED_WEIGHT if closed is not None and closed <= now else 1.0
        if weight[rowid] != 1.0:
            signals[rowid]["closed"] = closed.isoformat().replace("+00:00", "Z")
    fused = sorted(scores, key=lambda rowid: (-scores[rowid] * weight[rowid], rowid))
    fused = fused[:max(k, RERANK_MIN, RERANK_TIMES * k)]
    cosine, texts = _rerank(ds, query, qv, fused, scores, signals)
    for rowid in fused:
        scores[rowid] *= weight[rowid]
    best = sorted(fused, key=lambda rowid: (-scores[rowid], rowid))[:k]
    chosen: list[tuple[int, str, int, str]] = []
    one_take = context and index is not None and threads_where is None  # the index knows the threads' turns
    if one_take:
        facts = index.take(best, ["id", "cube", "time", "kind", "created_at"]).to_pydict()
        turns = [_Turn(facts["id"][i], facts["cube"][i], facts["time"][i],
                       *_wants(facts["kind"][i], facts["time"][i], facts["created_at"][i], "?" in texts[rowid], i))
                 for i, rowid in enumerate(best)]
        chosen = _choose_context(turns, lambda threads: _threads(ds, threads, None, live, index))
    # The winners and their context, in one take.
    taken = _take_units(ds, best + sorted({rowid for _, _, rowid, _ in chosen} - set(best)), index=index)
    hits = [Hit(taken[rowid], scores[rowid], signals[rowid], cosine=cosine[rowid]) for rowid in best]
    for i, side, rowid, why in chosen:
        getattr(hits[i], side).append(taken[rowid])
        hits[i].context_reason = why
    if context and not one_take:
        attach_context(ds, hits, threads_where, live, index)
    return hits


def _rerank(ds: Any, query: str, qv: np.ndarray, rowids: list[int], scores: dict[int, float],
            signals: dict[int, dict[str, Any]]) -> tuple[dict[int, float], dict[int, str]]:
    """Mix each candidate's relevance into its score (see the module's docstring); their cosines and
    texts by row id.

    The relevance is the unit's own (its text, without context): ``rate`` gives the passage's later.
    """
    from memos_cli.plaintext.relevance import covered, query_words, relevance

    taken = ds._take_rows(rowids, columns=["text", "vector"])
    cosines = _cosines(qv, taken.column("vector"))
    texts = taken.column("text").to_pylist()
    words = query_words(query)
    for rowid, text, cos in zip(rowids, texts, cosines, strict=True):
        rel = relevance(cos, covered(words, text)[1])
        signals[rowid]["fused"] = round(scores[rowid], 6)
        signals[rowid]["unit_relevance"] = round(rel, 4)
        scores[rowid] = (scores[rowid] + WEIGHT_RELEVANCE * rel) / (1.0 + WEIGHT_RELEVANCE)
    return dict(zip(rowids, cosines, strict=True)), dict(zip(rowids, texts, strict=True))


class _Lives:
    """(whether ``live`` keeps it, valid_to) of candidate rows, read once each."""

    def __init__(self, ds: Any, live: Live | None, index: RowIndex | None = None) -> None:
        self.ds = ds
        self.live = live
        self.index = index
        self.info: dict[int, tuple[bool, datetime | None]] = {}

    def read(self, rowids: list[int]) -> None:
        missing = [r for r in dict.fromkeys(rowids) if r not in self.info]
        if missing:
            columns = ["status", "expires_at", "valid_to"]
            taken = self.index.take(missing, columns) if self.index else self.ds._take_rows(missing, columns=columns)
            alive = self.live.mask(taken).to_pylist() if self.live else [True] * len(missing)
            self.info.update(zip(missing, zip(alive, taken.column("valid_to").to_pylist(), strict=True), strict=True))

    def alive(self, found: list[tuple[int, float]], n: int, asked: int,
              again: Callable[[], list[tuple[int, float]]]) -> list[tuple[int, float]]:
        """The first ``n`` of a search's results that ``live`` keeps; ``again()`` if too few were."""
        self.read([r for r, _ in found[:n]])  # usually all of them are alive: read no further
        kept = [(r, s) for r, s in found[:n] if self.info[r][0]]
        if len(kept) < n and len(found) > n:
            self.read([r for r, _ in found[n:]])
            kept += [(r, s) for r, s in found[n:] if self.info[r][0]]
        if len(kept) >= n or len(found) < asked:  # enough, or the search found all there is
            return kept[:n]
        return again()


def _cosines(query: np.ndarray, vectors: Any) -> list[float]:
    """Cosine similarity of the query's vector and each of an Arrow column of vectors."""
    if len(vectors) == 0:
        return []
    matrix = vectors.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
    norms = np.linalg.norm(matrix, axis=1) * (float(np.linalg.norm(query)) or 1.0)
    return [float(c) for c in (matrix @ query) / np.where(norms > 0, norms, 1.0)]


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
