"""Recall: filters and the hybrid ranking of plaintext units.

Two retrievers run over the same filtered rows of the ``units`` table:
LanceDB's native full-text search (BM25 over stemmed, lower-cased words)
and vector search (cosine distance of the query's embedding). Their ranked
lists are fused with weighted reciprocal rank fusion,

    score(unit) = sum over retrievers r of  w_r / (RRF_K + rank_r(unit)),

with ranks starting at 1. RRF needs no calibration between BM25 scores and
cosine distances, which live on unrelated scales. BM25 gets the larger
weight: on conversational memory (LoCoMo) exact words (names, places,
objects) carry more of the evidence than MiniLM's sentence embeddings do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from .table import from_row, sql_str, sql_time
from .units import MemoryUnit, check_name

RRF_K = 60
WEIGHT_TEXT = 1.0
WEIGHT_VECTOR = 0.7
CANDIDATES_MIN = 50  # each retriever fetches at least this many, to fuse well


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

    def __post_init__(self) -> None:
        for name in ("kind", "cube", "user"):
            value = getattr(self, name)
            if value is not None:
                check_name(value, name)

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
        if self.tags:
            parts.append("array_has_all(tags, [" + ", ".join(sql_str(t) for t in self.tags) + "])")
        if self.since:
            parts.append(f"time >= {sql_time(self.since)}")
        if self.until:
            parts.append(f"time < {sql_time(self.until)}")
        if now is not None:
            parts.append(f"(expires_at IS NULL OR expires_at > {sql_time(now)})")
        return " AND ".join(parts) or None


@dataclass
class Hit:
    unit: MemoryUnit
    score: float
    signals: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        u = self.unit.to_json()
        return {
            "id": u["id"],
            "text": u["text"],
            "score": round(self.score, 6),
            "kind": u["kind"],
            "tags": u["tags"],
            "time": u["time"],
            "meta": u["meta"],
            "sources": u["sources"],
            "cube": u["cube"],
            "user": u["user"],
        }


_COLUMNS = [
    "id", "text", "kind", "tags", "meta", "sources", "cube", "user", "time", "created_at",
    "importance", "access_count", "status", "version",
]


def hybrid_search(ds: Any, query: str, vector: np.ndarray, k: int, where: str | None) -> list[Hit]:
    """The top ``k`` units for ``query`` in the Lance dataset ``ds``, fused from
    full-text and vector search."""
    n = max(CANDIDATES_MIN, 3 * k)
    ranked: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}

    for rank, row in enumerate(_run(ds, where, n, full_text_query=query), 1):
        rows[row["id"]] = row
        ranked.setdefault(row["id"], {})["text_rank"] = rank
        ranked[row["id"]]["bm25"] = round(float(row["_score"]), 4)

    nearest = {"column": "vector", "q": vector.astype(np.float32), "k": n, "metric": "cosine"}
    for rank, row in enumerate(_run(ds, where, n, nearest=nearest), 1):
        rows.setdefault(row["id"], row)
        ranked.setdefault(row["id"], {})["vector_rank"] = rank
        ranked[row["id"]]["cosine"] = round(1.0 - float(row["_distance"]), 4)

    hits = []
    for uid, sig in ranked.items():
        score = 0.0
        if "text_rank" in sig:
            score += WEIGHT_TEXT / (RRF_K + sig["text_rank"])
        if "vector_rank" in sig:
            score += WEIGHT_VECTOR / (RRF_K + sig["vector_rank"])
        hits.append(Hit(from_row(rows[uid]), score, sig))
    hits.sort(key=lambda h: (-h.score, h.unit.id))
    return hits[:k]


def _run(ds: Any, where: str | None, n: int, **search: Any) -> list[dict[str, Any]]:
    score = "_score" if "full_text_query" in search else "_distance"
    try:
        table = ds.to_table(columns=[*_COLUMNS, score], filter=where, prefilter=True, limit=n, **search)
    except (ValueError, OSError) as exc:
        # A query of only stop words or punctuation has no terms to search.
        if "full_text_query" in search and "query" in str(exc).lower():
            return []
        raise
    return table.to_pylist()
