"""Keep the LanceDB table in step with the unit files at HEAD.

The table is derived from the unit files (plus embeddings), and its marker
names the commit it reflects. Every write of memos updates both and moves the
marker with the commit. Anything else that moves HEAD (a crash after the
commit, ``git pull``, ``git checkout``, a clone, a purge that rewrote history)
leaves the marker behind; the next command that notices brings the table up to
date under the store's lock:

- when the marker's commit still exists: only the units whose files differ
  between it and HEAD are read, re-embedded if their text changed, and written;
- otherwise (no table, no marker, rewritten history, or a table of an older
  format, ``table.TABLE_FORMAT``): the table is rebuilt from every unit file,
  reusing the vectors of units whose text and model are unchanged, so only new
  text is embedded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from memos_cli.plaintext import files
from memos_cli.plaintext.sql import sql_str
from memos_cli.plaintext.table import TABLE_FORMAT
from memos_cli.plaintext.units import MemoryUnit

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

Progress = Callable[[int, int], None]


def is_current(store: MemoryStore) -> bool:
    from memos_cli.store.repo import read_head

    marker = store.table.marker()
    return marker.get("format") == TABLE_FORMAT and marker.get("head") == read_head(store.root)


def catch_up(store: MemoryStore, progress: Progress | None = None) -> str | None:
    """Bring the table to HEAD (the caller holds the lock); returns what was done, or None."""
    head = store.repo.head()
    table = store.table
    marker = table.marker()
    marked = marker.get("head")
    current = marker.get("format") == TABLE_FORMAT  # else its rows lack columns: rebuild
    if current and marked == head and (table.exists() or not store.repo.files(head or "HEAD", files.UNITS_DIR)):
        return None
    if current and marked and table.exists() and _known(store, marked):
        changes = store.repo.changed(marked, head or "HEAD", files.UNITS_DIR)
        upsert = [path for status, path in changes if status != "D" and files.id_of(path)]
        removed = [uid for status, path in changes if status == "D" and (uid := files.id_of(path))]
        units = store.repo.units_at(head or "HEAD", upsert)
        _write(store, units, removed, progress)
        table.mark(head)
        return f"brought the search table up to date with {len(units) + len(removed)} changed units"
    paths = [p for p in store.repo.files(head or "HEAD", files.UNITS_DIR) if files.id_of(p)]
    units = store.repo.units_at(head or "HEAD", paths)
    older = bool(marker) and not current and table.exists()
    rebuild(store, units, progress)
    table.mark(head)
    if not units:
        return None
    return f"rebuilt the search table{' in its new format' if older else ''} from {len(units)} unit files"


def _known(store: MemoryStore, sha: str) -> bool:
    """Is ``sha`` still a commit of this repository (a purge's rewrite deletes the old ones)?

    It need not be an ancestor of HEAD: after a ``git reset`` to an older
    commit, the difference between the two trees is still what changed.
    """
    return store.repo.probe(["cat-file", "-e", f"{sha}^{{commit}}"]).returncode == 0


def attach_vectors(store: MemoryStore, units: list[MemoryUnit], progress: Progress | None = None) -> int:
    """Give each unit its vector: the table's when its text and model are unchanged, else a new
    embedding. Returns how many were embedded."""
    table = store.table
    embedder = store.embedder
    known: dict[str, tuple[str, str, list[float]]] = {}
    if table.exists() and units:
        ids = [u.id for u in units if u.vector is None]
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            where = "id IN (" + ",".join(sql_str(i) for i in chunk) + ")"
            rows = table.select(where, columns=["id", "text", "model", "vector"]).to_pylist()
            known.update({r["id"]: (r["text"], r["model"], r["vector"]) for r in rows})
    todo = []
    for u in units:
        if u.vector is not None and u.model == embedder.model_id:
            continue
        old = known.get(u.id)
        if old and old[0] == u.text and old[1] == embedder.model_id and old[2] is not None:
            u.vector, u.model = list(old[2]), old[1]
        else:
            todo.append(u)
    store.embed(todo, progress)
    return len(todo)


def _write(store: MemoryStore, units: list[MemoryUnit], removed: list[str], progress: Progress | None) -> None:
    attach_vectors(store, units, progress)
    store.check_dim()
    table = store.table
    if units:
        table.upsert(units)
    table.delete(removed)
    table.cleanup()  # the table's upkeep (merges, indexes) follows the lock: MemoryStore.upkeep


def rebuild(store: MemoryStore, units: list[MemoryUnit], progress: Progress | None = None) -> None:
    """Make the table anew from these units (reusing the vectors the old one has), with its indexes."""
    attach_vectors(store, units, progress)
    table = store.table
    with table.exclusive():
        table.drop()
        if units:
            table.add(units)
            table.fold_indexes()
            table.cleanup(unverified=True)
