"""The ``units`` LanceDB table: its Arrow schema, row <-> unit conversion, I/O.

The table is derived data: the unit files in git are the memory, and the
table holds them again with their embeddings and the full-text and vector
indexes, for search. It lives in ``tables/``, which git ignores, next to a
marker (``synced.json``) naming the commit it reflects (see ``store.follow``).

Reads and writes go through ``lance`` (pylance), the format library LanceDB
is built on: importing it takes about 0.4 s against another 1.1 s for
``lancedb``, whose REST namespace client a local store never uses, and cold
start is what a CLI run from scripts pays on every call (every ``memos add``
paid it until writes moved here too). The table on disk is the one LanceDB
makes (``lancedb.connect("tables").open_table("units")`` opens it), with the
full-text index of LanceDB's default ``FTS()`` settings.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

# Lance logs warnings from Rust straight to stderr; a CLI shows only its own errors.
os.environ.setdefault("LANCE_LOG", "error")

import lance  # noqa: E402
import pyarrow as pa  # noqa: E402
from lance.dataset import ColumnOrdering  # noqa: E402

from memos_cli.lock import StoreLock  # noqa: E402
from memos_cli.plaintext.sql import sql_str  # noqa: E402
from memos_cli.plaintext.terms import index_terms  # noqa: E402
from memos_cli.plaintext.units import MemoryUnit  # noqa: E402

TABLE = "units"
MARKER = "synced.json"
# Version of the table's layout, recorded in the marker. A table of another
# format (or a marker without one) is stale whatever commit it names: the next
# command rebuilds it from the unit files, reusing its vectors.
# 1 (no "format" in the marker): no ``pinned`` column; 2: ``pinned``; 3: ``terms``
# (the text as the full-text index sees it, see ``terms``), indexed instead of ``text``.
TABLE_FORMAT = 3
FTS_COLUMN = "terms"
FTS_INDEX = "terms_idx"
_TS = pa.timestamp("us", tz="UTC")
T = TypeVar("T")
READ_RETRIES = 5  # a read that lost a race with a writer's cleanup tries the newer version
FANOUT = 16  # fragments of one size level merged together
FTS_MAX_SEGMENTS = 4  # full-text index delta segments before they are merged
UPKEEP_LOCK = "upkeep.lock"  # in tables/: see UnitTable.exclusive
UPKEEP_LOCK_WAIT = 1.0  # seconds an upkeep waits for the store's lock to commit a merge, else leaves it
EXCLUSIVE_WAIT = 120.0  # seconds a drop waits for an upkeep at work (folding 100k rows anew takes a few)
_UPKEEP_HELD: set[str] = set()  # the upkeep locks this process holds
# Vector index: below this many rows a flat scan is exact and fast enough
# (about 6 ms at 20k rows on 2 cores). Above, IVF_SQ (int8 vectors in about
# n/400 partitions, 24 probed): at 100k units 4.9 ms a search against 65 ms
# flat, with 99.5% of the exact top 50. IVF_FLAT gave the exact top 50 in
# 11 ms, with an index four times the size.
VECTOR_INDEX = "vector_idx"
VECTOR_INDEX_TYPE = "IVF_SQ"
VECTOR_INDEX_MIN_ROWS = 25_000
VECTOR_NPROBES = 24
TIME_FIELDS = ("created_at", "updated_at", "time", "valid_from", "valid_to", "last_accessed", "expires_at")


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("kind", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("meta", pa.string()),  # JSON object
            pa.field("sources", pa.string()),  # JSON list of metas
            pa.field("cube", pa.string()),
            pa.field("user", pa.string()),
            *[pa.field(name, _TS) for name in TIME_FIELDS[:5]],
            pa.field("importance", pa.float32()),
            pa.field("access_count", pa.int64()),
            *[pa.field(name, _TS) for name in TIME_FIELDS[5:]],
            pa.field("status", pa.string()),
            pa.field("pinned", pa.bool_()),
            pa.field("version", pa.int32()),
            pa.field("supersedes", pa.string()),
            pa.field("model", pa.string()),
            pa.field(FTS_COLUMN, pa.string()),  # derived from text, for the full-text index only
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def row_columns() -> list[str]:
    """Every column but the vector and the full-text terms: what listing and showing need."""
    return [f.name for f in schema(1) if f.name not in ("vector", FTS_COLUMN)]


def to_arrow(units: list[MemoryUnit], dim: int) -> pa.Table:
    sch = schema(dim)
    cols: dict[str, list[Any]] = {f.name: [] for f in sch}
    for u in units:
        for name in cols:
            if name == FTS_COLUMN:
                cols[name].append(index_terms(u.text))
                continue
            value = getattr(u, name)
            if name in ("meta", "sources"):
                value = json.dumps(value, ensure_ascii=False)
            cols[name].append(value)
    return pa.table(cols, schema=sch)


def from_row(row: dict[str, Any]) -> MemoryUnit:
    return MemoryUnit(
        id=row["id"],
        text=row["text"],
        kind=row.get("kind") or "note",
        tags=list(row.get("tags") or []),
        meta=json.loads(row.get("meta") or "{}"),
        sources=json.loads(row.get("sources") or "[]"),
        cube=row.get("cube") or "default",
        user=row.get("user") or "",
        created_at=row.get("created_at"),
        updated_at=row.get("updated_at"),
        time=row.get("time"),
        valid_from=row.get("valid_from"),
        valid_to=row.get("valid_to"),
        importance=round(float(row.get("importance") if row.get("importance") is not None else 0.5), 6),
        access_count=int(row.get("access_count") or 0),
        last_accessed=row.get("last_accessed"),
        expires_at=row.get("expires_at"),
        status=row.get("status") or "active",
        pinned=bool(row.get("pinned") or False),  # a format-1 table has no such column
        version=int(row.get("version") or 1),
        supersedes=row.get("supersedes"),
        model=row.get("model") or "",
        vector=row.get("vector"),
    )


class UnitTable:
    """The units table of one store; the store calls its writers under its lock."""

    def __init__(self, tables_dir: Path) -> None:
        self.dir = tables_dir
        self.path = tables_dir / f"{TABLE}.lance"
        self._ds: Any = None
        self._ds_stamp: frozenset[str] = frozenset()
        self._row_index: tuple[Any, Any] | None = None  # (dataset, its RowIndex)
        self._recalled: Any = None  # the dataset a recall last read

    def exists(self) -> bool:
        return (self.path / "_versions").is_dir()

    @property
    def version(self) -> int | None:
        return int(self.ds.version) if self.exists() else None

    def marker(self) -> dict[str, Any]:
        """What the table reflects: ``{"head": commit, "version": table version, "format": TABLE_FORMAT}``,
        or {}."""
        try:
            data = json.loads((self.dir / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def mark(self, head: str | None) -> None:
        """Record that the table now reflects commit ``head``, in the current format."""
        self.dir.mkdir(parents=True, exist_ok=True)
        from memos_cli.plaintext.files import write_private

        tmp = self.dir / f".{MARKER}.tmp"
        write_private(tmp, json.dumps({"head": head, "version": self.version, "format": TABLE_FORMAT}).encode())
        os.replace(tmp, self.dir / MARKER)

    def unmark(self) -> None:
        (self.dir / MARKER).unlink(missing_ok=True)

    def restore(self, version: int | None) -> None:
        """Put the table back to an earlier version (None: the table did not exist).

        An upkeep may have committed a merge or an index since: they change no row, and Lance refuses
        any still under way after a restore."""
        if not self.exists() or self.version == version:
            return
        if version is None:
            with self.exclusive():
                self.drop()
            return
        try:
            lance.dataset(str(self.path), version=version).restore()
        except (OSError, ValueError, pa.ArrowInvalid):
            with self.exclusive():
                self.drop()  # that version is gone: the next command rebuilds the table from the files
            return
        self._changed()

    def drop(self) -> None:
        """Remove the table; it is rebuilt from the unit files. The caller holds ``exclusive``."""
        import shutil

        self.unmark()
        if self.path.exists():
            shutil.rmtree(self.path)
        self._changed()

    @property
    def dim(self) -> int | None:
        """Width of the stored vectors; None before the table exists."""
        return self.ds.schema.field("vector").type.list_size if self.exists() else None

    @property
    def ds(self) -> Any:
        """The dataset at its latest version, for reading.

        Reopened when another process has written since, so a long-lived
        reader sees what other writers add: every version has a manifest of
        its own name in ``_versions/`` (a directory's mtime is too coarse to
        tell two quick writes apart).
        """
        stamp = frozenset(os.listdir(self.path / "_versions"))
        if self._ds is None or stamp != self._ds_stamp:
            self._ds = lance.dataset(str(self.path))
            self._ds_stamp = stamp
        return self._ds

    def row_index(self, ds: Any) -> Any:
        """The ``RowIndex`` of ``ds`` for a recall, or None: it is built the second time a recall
        reads the same version (see ``rowindex``)."""
        if self._row_index is not None and self._row_index[0] is ds:
            return self._row_index[1]
        if self._recalled is not ds:
            self._recalled = ds
            return None
        from memos_cli.plaintext.rowindex import RowIndex

        self._row_index = (ds, RowIndex(ds))
        return self._row_index[1]

    def open_writer(self) -> None:
        """Before the store's lock: open the dataset and read its ids, so that the write under the
        lock starts warm. An upsert matches rows by id, and the first one in a process, cold, took
        0.5-2.5 s at 100k units (Lance loading the files' metadata); after this read (10 ms), 0.03 s."""
        if self.exists():
            self.ds.to_table(columns=["id"])

    def refresh_writer(self) -> None:
        """Under the lock: the next write starts from the latest version, whoever wrote it."""
        self._changed()

    def _changed(self) -> None:
        self._ds = None

    def read(self, fn: Callable[[Any], T]) -> T:
        """``fn(dataset)``, retried on the latest version if a file it needed is gone.

        Readers take no lock, and every write drops the versions before it
        (history is git's), so a read that began on the version before a
        concurrent write can find a merged-away data file missing.
        """
        for attempt in range(READ_RETRIES + 1):
            try:
                return fn(self.ds)
            except (OSError, pa.ArrowInvalid) as exc:
                if "not found" not in str(exc).lower() or attempt == READ_RETRIES:
                    raise
                self._changed()
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def add(self, units: list[MemoryUnit]) -> None:
        """Append embedded units; the first add creates the table with their vectors' width."""
        rows = to_arrow(units, len(units[0].vector or []))
        if not self.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
        lance.write_dataset(rows, str(self.path), mode="append" if self.exists() else "create")
        self._changed()

    def upsert(self, units: list[MemoryUnit]) -> None:
        if not self.exists():
            self.add(units)
            return
        self.ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            to_arrow(units, self.dim or 0))
        self._changed()

    def delete(self, ids: list[str]) -> None:
        if not ids or not self.exists():
            return
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.ds.delete("id IN (" + ",".join(sql_str(i) for i in chunk) + ")")
            self._changed()

    def present(self, columns: list[str]) -> list[str]:
        """Those of these columns the table has (a table of an older format may lack some)."""
        if not self.exists():
            return columns
        names = set(self.read(lambda ds: ds.schema.names))
        return [c for c in columns if c in names]

    def count(self, where: str | None = None) -> int:
        if not self.exists():
            return 0
        return int(self.read(lambda ds: ds.count_rows(filter=where)))

    def select(self, where: str | None, columns: list[str] | None = None, limit: int | None = None,
               newest_first: bool = False) -> pa.Table:
        if not self.exists():
            return schema(1).empty_table()
        order = [ColumnOrdering("id", ascending=False)] if newest_first else None  # ids sort by time
        return self.read(lambda ds: ds.to_table(filter=where, columns=columns, limit=limit, order_by=order))

    def units(self, where: str | None, limit: int | None = None) -> list[MemoryUnit]:
        return [from_row(r) for r in self.select(where, limit=limit).to_pylist()]

    def ensure_fts_index(self, force: bool = False) -> None:
        """Create the full-text index, or fold new rows into it once enough have piled up.

        Unindexed rows are still searched (by a flat scan), so this only
        keeps queries fast; it never changes results.
        """
        ds = self.ds
        if FTS_INDEX not in {i.name for i in ds.describe_indices()}:
            if ds.count_rows() or force:
                # Of the terms column (accents folded, CJK in n-grams, symbols named: see ``terms``),
                # words lower-cased, stemmed (English), stop words dropped: Lance's defaults, which
                # are LanceDB's FTS() too.
                ds.create_scalar_index(FTS_COLUMN, index_type="INVERTED", name=FTS_INDEX, replace=True)
        else:
            stats = ds.stats.index_stats(FTS_INDEX)
            if force or stats["num_unindexed_rows"] > max(1000, stats["num_indexed_rows"] // 10):
                # Not a full optimize: it would also rewrite every data file. New rows go into a
                # delta segment; once FTS_MAX_SEGMENTS pile up they are merged into one, as Lance
                # merges only fragments that the same segments cover (``merge_plan``).
                segments = stats["num_indices"] or 1
                merge = segments if segments + 1 >= FTS_MAX_SEGMENTS else 0  # all of them, with the new rows
                ds.optimize.optimize_indices(index_names=[FTS_INDEX], num_indices_to_merge=merge)
        self._changed()

    def fragments(self) -> int:
        if not self.exists():
            return 0
        return len(self.ds.get_fragments())

    # ---- upkeep (``MemoryStore.upkeep`` runs it after a write, outside the store's lock) ----------

    @contextmanager
    def exclusive(self, timeout: float | None = EXCLUSIVE_WAIT) -> Iterator[bool]:
        """Hold the upkeep lock; yields whether it is held (``timeout`` None: not waiting at all).

        Whoever keeps the table up holds it (``MemoryStore.upkeep``), and so does what must not run
        beside that: a cleanup of files that no version names (``cleanup(unverified=True)``), and what
        replaces the table (a drop and rebuild, under the store's lock), which thus waits for an
        upkeep at work to finish and keeps the next from starting. An upkeep waits for the store's lock
        only ``UPKEEP_LOCK_WAIT``, so the two never wait for each other long. Held again by the process
        that holds it (flock is per open file, not per process), it is held already.
        """
        key = str(self.dir / UPKEEP_LOCK)
        if key in _UPKEEP_HELD:
            yield True
            return
        lock = StoreLock(self.dir / UPKEEP_LOCK, timeout or 0.0)
        try:
            held = lock.acquire(blocking=timeout is not None)
        except OSError:
            if timeout is not None:
                raise
            held = False  # a store we may read but not write
        if not held:
            yield False
            return
        _UPKEEP_HELD.add(key)
        try:
            yield True
        finally:
            _UPKEEP_HELD.discard(key)
            lock.release()

    def merge_plan(self) -> Any | None:
        """The next fragment merge, planned (``lance.optimize.CompactionPlan``), or None.

        Every write appends a fragment, and a table of many small fragments is slow to search and to
        write to. Size-tiered compaction, as in an LSM tree, keeps them few: a fragment's level is
        ``floor(log_FANOUT(rows))``, and once ``FANOUT`` fragments share a level they are merged into
        one of the next level, leaving every other fragment untouched. A row is thus rewritten once per
        level (log_16 of the table size: 3 times by 10k rows), never again in between.
        """
        from lance.optimize import Compaction

        if not self.exists():
            return None
        ds = self.ds
        # Lance merges only fragments that the same index segments cover, so fragments are grouped by
        # that coverage as well as by level.
        segments = [(seg.uuid, seg.fragment_ids) for index in ds.describe_indices() for seg in index.segments]
        groups: dict[tuple[frozenset[str], int], list[int]] = {}
        for frag in ds.get_fragments():
            fid, rows = frag.fragment_id, max(1, frag.metadata.physical_rows)
            covered = frozenset(uuid for uuid, fids in segments if fid in fids)
            groups.setdefault((covered, int(math.log(rows, FANOUT) + 1e-9)), []).append(fid)
        full = sorted((key for key, ids in groups.items() if len(ids) >= FANOUT), key=lambda k: k[1])
        if not full:
            return None
        merge = set(groups[full[0]])
        others = [fid for ids in groups.values() for fid in ids if fid not in merge]
        plan = Compaction.plan(ds, {"target_rows_per_fragment": 1 << 30, "materialize_deletions_threshold": 0.3,
                                    "excluded_fragment_ids": others})
        return plan if plan.num_tasks() else None

    def compaction_plan(self) -> Any | None:
        """All fragments merged into fragments of up to 1M rows, deleted rows dropped; or None."""
        from lance.optimize import Compaction

        if not self.exists():
            return None
        plan = Compaction.plan(self.ds, {})
        return plan if plan.num_tasks() else None

    def rewrite(self, plan: Any) -> list[Any]:
        """The slow part of a merge: write the merged fragments' files. Commits nothing, so it needs no
        store lock; ``commit_rewrite``, under it, makes them the table's."""
        ds = lance.dataset(str(self.path), version=plan.read_version)
        return [task.execute(ds) for task in plan.tasks]

    def commit_rewrite(self, results: list[Any]) -> bool:
        """Under the store's lock: make rewritten fragments the table's; whether they are.

        They are not when a write since changed the rows they were made from (Lance refuses the
        commit), or when a cleanup took their files as unreferenced; their files are removed then."""
        from lance.commit import CommitConflictError
        from lance.optimize import Compaction

        if not results:
            return False
        if all(path.is_file() for path in self._new_files(results)):
            try:
                Compaction.commit(self.ds, results)
            except (CommitConflictError, OSError, ValueError, RuntimeError):
                pass  # a write since touched those fragments (a "retryable conflict" to Lance)
            else:
                self._changed()
                return True
        self.discard(results)
        return False

    def discard(self, results: list[Any]) -> None:
        """Remove the files of rewritten fragments that were not committed (no version names them)."""
        for path in self._new_files(results):
            path.unlink(missing_ok=True)

    def _new_files(self, results: list[Any]) -> list[Path]:
        return [self.path / "data" / f.path for r in results for frag in r.new_fragments for f in frag.files]

    def fold_indexes(self, force: bool = False) -> bool:
        """Fold new rows into the full-text and vector indexes; whether a new version was committed.

        Needs no store lock: Lance commits an index by itself, and what a writer may commit meanwhile
        (appends, updates, deletes) is compatible with it (rows an index does not cover are searched
        by a flat scan, deleted ones filtered out). What is not (a restore, a rewrite of the fragments
        it covers) makes Lance refuse it, and the next upkeep folds those rows again."""
        if not self.exists():
            return False
        before = self.version
        self.ensure_fts_index(force=force)
        self._index_vectors()
        self._changed()
        return self.version != before

    def cleanup(self, unverified: bool = False) -> None:
        """Drop every version but the latest (kept until the write committed, to undo it).

        ``unverified``: also files that no version names, however new (left by a write or merge cut
        off). Those may be an upkeep's, not yet committed, so only a holder of ``exclusive`` may."""
        if self.exists():
            self.ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=unverified)
            self._changed()

    def _index_vectors(self) -> None:
        """Build the vector index once the table is big enough; keep it current.

        Rows not yet in the index are still searched, by a flat scan, so this
        only keeps queries fast. New rows are folded in once they pass 10% of
        the indexed ones; the index is trained anew when the table has doubled.
        """
        ds = self.ds
        rows = ds.count_rows()
        if rows < VECTOR_INDEX_MIN_ROWS:
            return
        index = next((i for i in ds.describe_indices() if i.name == VECTOR_INDEX), None)
        indexed = index.num_rows_indexed if index else 0
        if indexed * 2 < rows or (index and index.index_type != VECTOR_INDEX_TYPE):
            partitions = max(16, min(512, rows // 400))
            ds.create_index("vector", index_type=VECTOR_INDEX_TYPE, metric="cosine", num_partitions=partitions,
                            name=VECTOR_INDEX, replace=True)
        elif rows - indexed > max(5000, indexed // 10):
            ds.optimize.optimize_indices(index_names=[VECTOR_INDEX])
