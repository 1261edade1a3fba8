"""``memos export``: the units that match the recall filters, written as JSON lines, Markdown or a pack.

Units are read from their files at HEAD (what git holds, byte for byte the
memory), chosen by the search table's filters, in id order (creation order),
with the access counts recalled since the last write added, as every read
shows them. A pack also carries the cube's parametric memories and, unless
told not to, the units' vectors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import MemoryUnit
from memos_cli.store import layout
from memos_cli.store import params as params_store

if TYPE_CHECKING:
    from memos_cli.plaintext.retrieval import Filters
    from memos_cli.store.store import MemoryStore

FORMATS = ("jsonl", "markdown", "pack")


def select(store: MemoryStore, filters: Filters, *, vectors: bool = False) -> list[MemoryUnit]:
    """The units matching ``filters``, as their files at HEAD have them, in id order."""
    store._ensure_current()
    if not store.table.exists():
        return []
    columns = ["id", "vector", "model"] if vectors else ["id"]
    rows = store.table.select(filters.sql(), columns=columns).to_pydict()
    ids = sorted(rows["id"])
    head = store.repo.head() or "HEAD"
    units = store.repo.units_at(head, [files.unit_path(i) for i in ids])
    if vectors:
        by_id = {i: (v, m) for i, v, m in zip(rows["id"], rows["vector"], rows["model"], strict=True)}
        for unit in units:
            unit.vector, unit.model = by_id[unit.id]
    return store._with_pending(units)


def export(store: MemoryStore, filters: Filters, fmt: str, dest: str | None, *, vectors: bool | None = None,
           cube: str | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Write the export; returns what was written (format, path, counts, bytes, seconds).

    ``progress(phase, done, total)`` is told how far the reading and the writing are."""
    if fmt not in FORMATS:
        raise UsageError(f"bad format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt != "jsonl" and not dest:
        raise UsageError(f"--format {fmt} writes {'a folder' if fmt == 'markdown' else 'a file'}: give it with -o PATH")
    started = time.perf_counter()
    with_vectors = (fmt == "pack") if vectors is None else vectors
    if with_vectors and fmt == "markdown":
        raise UsageError("--vectors is for jsonl and pack exports")
    target = Path(dest).expanduser() if dest and dest != "-" else None
    if target is not None and fmt != "markdown" and target.is_dir():
        raise UsageError(f"{target} is a folder; give a file name")
    if target is not None and fmt != "markdown" and not target.parent.is_dir():
        raise UsageError(f"no folder {target.parent} to write {target.name} into")
    if progress:
        progress("reading", 0, 0)
    units = select(store, filters, vectors=with_vectors)
    written = _counted(units, progress)
    model = store.config.embedding_model if with_vectors else None
    if with_vectors and units:
        model = units[0].model
    result: dict[str, Any] = {"format": fmt, "path": str(target) if target else "-", "units": len(units)}
    if fmt == "jsonl":
        from memos_cli.portable import jsonl

        if target is None:
            jsonl.write(sys.stdout, written, len(units), vectors=with_vectors, model=model)
            sys.stdout.flush()
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    jsonl.write(fh, written, len(units), vectors=with_vectors, model=model)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
    elif fmt == "markdown":
        from memos_cli.portable import markdown

        assert target is not None
        markdown.write(target, written)
    else:
        from memos_cli.portable import pack

        assert target is not None
        if progress:
            progress("writing the pack", 0, 0)
        parametric = [(r, params_store.read_blob(store, r)) for r in params_store.records(store, cube)]
        manifest = pack.write(target, units, cube=cube, model=model, vectors=with_vectors, parametric=parametric)
        result["params"] = manifest["counts"]["params"]
        result["vectors"] = manifest["embedding"] is not None
    if target is not None:
        result["bytes"] = layout.du(target) if target.is_dir() else target.stat().st_size
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result



def _counted(units: list[MemoryUnit], progress: Callable[[str, int, int], None] | None) -> Iterator[MemoryUnit]:
    """The units, telling ``progress`` every thousand."""
    for i, unit in enumerate(units, 1):
        yield unit
        if progress and (i % 1000 == 0 or i == len(units)):
            progress("writing", i, len(units))
