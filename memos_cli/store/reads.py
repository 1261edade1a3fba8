"""Reading memory: one unit, a listing, recall (with pending access counts added), sizes and stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext.sql import sql_str
from memos_cli.plaintext.units import MemoryUnit, utcnow
from memos_cli.store import layout

if TYPE_CHECKING:
    from memos_cli.plaintext.retrieval import Filters, Hit


def check_relevance(value: float, name: str = "min relevance") -> float:
    """A relevance threshold: a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise UsageError(f"bad {name} {value!r}: use a number from 0 to 1")
    return float(value)


class Reads:
    """``MemoryStore``'s reads (a mixin: ``self`` is the store)."""

    def _units_by_id(self, ids: list[str]) -> list[MemoryUnit]:
        """These units from the table (vectors included), in the order given."""
        found: dict[str, MemoryUnit] = {}
        for chunk in layout.chunks(ids, 500):
            found.update({u.id: u for u in self.table.units("id IN (" + ",".join(sql_str(i) for i in chunk) + ")")})
        return [found[i] for i in ids if i in found]

    def get_many(self, ids: list[str]) -> list[MemoryUnit]:
        """The units with these full ids that exist, in the order given (no prefixes, no errors)."""
        self._ensure_current()
        return self._with_pending(self._units_by_id(ids)) if ids and self.table.exists() else []

    def get(self, uid: str) -> MemoryUnit:
        """A unit by id or by a unique prefix of at least 4 characters."""
        uid = uid.strip().lower()
        if len(uid) < 4 or not uid.isalnum():
            raise NotFoundError(f"no memory with id {uid!r}")
        self._ensure_current()
        found = self.table.units(f"starts_with(id, {sql_str(uid)})", limit=2)
        exact = [u for u in found if u.id == uid]
        if exact:
            found = exact
        if not found:
            raise NotFoundError(f"no memory with id {uid!r}")
        if len(found) > 1:
            raise UsageError(f"id prefix {uid!r} is ambiguous; give more characters")
        return self._with_pending(found)[0]

    def list(self, filters: Filters | None = None, limit: int = 50) -> list[MemoryUnit]:
        from memos_cli.plaintext.retrieval import Filters
        from memos_cli.plaintext.table import from_row, row_columns

        where = (filters or Filters()).sql()
        self._ensure_current()
        columns = self.table.present(row_columns())  # a table not yet rebuilt (a read-only store) may lack some
        rows = self.table.select(where, columns=columns, limit=limit or None, newest_first=True).to_pylist()
        return self._with_pending([from_row(r) for r in rows])

    def _with_pending(self, units: list[MemoryUnit]) -> list[MemoryUnit]:
        pending = self.pending_access() if units else {}
        if pending:
            from memos_cli.plaintext.units import parse_time

            for u in units:
                if u.id in pending:
                    n, last = pending[u.id]
                    u.access_count += n
                    u.last_accessed = parse_time(last)
        return units

    def recall(self, query: str, k: int = 10, filters: Filters | None = None, *, context: bool = True,
               min_relevance: float = 0.0) -> list[Hit]:
        return self.recall_many([query], k, filters, context=context, min_relevance=min_relevance)[0]

    def recall_many(self, queries: list[str], k: int | list[int] = 10, filters: Filters | None = None, *,
                    context: bool = True, min_relevance: float = 0.0) -> list[list[Hit]]:
        """Hybrid recall for several queries; counts the accesses of the hits.

        With ``context``, conversation turns come with their neighbouring turns
        (``retrieval.attach_context``). Every hit is rated (``retrieval.rate``), and
        those with a relevance below ``min_relevance`` are dropped: a query that
        nothing in the store is about gets no results.
        """
        from memos_cli.plaintext.retrieval import Filters, hybrid_search, rate

        check_relevance(min_relevance)

        ks = k if isinstance(k, list) else [k] * len(queries)
        for kk in ks:
            if not isinstance(kk, int) or isinstance(kk, bool) or not 1 <= kk <= 1000:
                raise UsageError(f"bad k {kk!r}: use a whole number from 1 to 1000")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise UsageError("the query is empty")
        self._ensure_current()
        if not self.table.exists():
            return [[] for _ in queries]
        self.check_dim()
        filters = filters or Filters()
        where, live = filters.narrow_sql(), filters.live(utcnow())  # live: applied to the candidates
        threads_where = filters.narrow_sql(cube=False)  # a hit's thread is in the hit's cube
        embed = self.embedder.embed_query

        def recall_one(ds: Any, q: str, kk: int) -> list[Hit]:
            index = self.table.row_index(ds)  # None for a process's first recall of this version
            return hybrid_search(ds, q, embed, kk, where, live, index, context=context, threads_where=threads_where)

        results = [self.table.read(lambda ds, q=q, kk=kk: recall_one(ds, q, kk))
                   for q, kk in zip(queries, ks, strict=True)]
        for q, hits in zip(queries, results, strict=True):
            rate(q, hits, self.config.embedding_model)
        results = [[h for h in hits if (h.relevance or 0.0) >= min_relevance] for hits in results]
        self.log_access(h.unit.id for hits in results for h in hits)
        return results

    def sizes(self) -> dict[str, int]:
        return {
            "tables_bytes": layout.du(self.root / layout.TABLES_DIR),
            "git_bytes": layout.du(self.root / ".git"),
        }

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {"kind": {}, "status": {}, "cube": {}}
        self._ensure_current()
        if self.table.exists():
            cols = self.table.select(None, columns=["kind", "status", "cube"]).to_pydict()
            for name, values in cols.items():
                for value in values:
                    counts[name][value] = counts[name].get(value, 0) + 1
        pinned = self.table.count("pinned = true AND status = 'active'") if self.table.present(["pinned"]) else 0
        commits = int(self.repo.git.rev_list("--count", "HEAD")) if self.repo.head() else 0
        return {
            "store": str(self.root),
            "units": sum(counts["status"].values()),
            "by_kind": dict(sorted(counts["kind"].items())),
            "by_status": dict(sorted(counts["status"].items())),
            "by_cube": dict(sorted(counts["cube"].items())),
            "pinned": pinned,  # active units
            "commits": commits,
            "fragments": self.table.fragments(),
            "pending_accesses": sum(n for n, _ in self.pending_access().values()),
            "embedding_model": self.config.embedding_model,
            "schema_version": self.config.schema_version,
            **self.sizes(),
        }
