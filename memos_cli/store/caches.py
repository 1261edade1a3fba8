"""Activation memory on disk: the cache files and the records that say what each was built from.

A cache is a content-addressed safetensors file (``models.kvcache``) of the
KV state of a block of memory prefilled on a chat model; its record, a row of
the LanceDB table ``tables/kv/activations.lance``, points to the file by
sha256 and says what it was built from: the model's identity, the units' ids
and versions, the tokens. Caches are derived data like the search table, so
they live in ``tables/``, which git ignores. They are the store's, as every
byte of memory on disk is: ``purge`` removes the caches built from a unit
(they hold its text), and ``check`` finds missing, damaged and orphaned ones.
Building and loading them is ``memos_cli.activation``'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext.units import iso

if TYPE_CHECKING:
    from memos_cli.models.generator import ModelIdentity
    from memos_cli.store.store import MemoryStore

KV_DIR = "kv"  # under the store's tables/ directory
TABLE = "activations.lance"


@dataclass(frozen=True)
class Selection:
    """Which units a block of memory holds: the pinned ones, the ``top`` N by heat, or a query's ``k`` results."""

    pinned: bool = False
    top: int | None = None
    query: str | None = None
    k: int = 10

    def __post_init__(self) -> None:
        chosen = sum([self.pinned, self.top is not None, self.query is not None])
        if chosen != 1:
            raise UsageError("choose one of --pinned, --top N or --query TEXT")
        if self.top is not None and not 1 <= self.top <= 10_000:
            raise UsageError(f"bad --top {self.top}: use a whole number from 1 to 10000")
        if self.query is not None and not self.query.strip():
            raise UsageError("the query is empty")
        if not 1 <= self.k <= 1000:
            raise UsageError(f"bad -k {self.k}: use a whole number from 1 to 1000")

    def to_json(self) -> dict[str, Any]:
        if self.pinned:
            return {"pinned": True}
        if self.top is not None:
            return {"top": self.top}
        return {"query": self.query, "k": self.k}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        return cls(pinned=bool(data.get("pinned")), top=data.get("top"), query=data.get("query"), k=int(data.get("k", 10)))

    def describe(self) -> str:
        if self.pinned:
            return "pinned"
        if self.top is not None:
            return f"pinned + top {self.top} by heat"
        return f"query {self.query!r} (k={self.k})"


@dataclass
class Activation:
    """The record of one saved activation memory."""

    id: str
    cube: str
    selection: Selection
    sources: list[dict[str, Any]]  # [{"id": ..., "version": ...}] in head order
    sha256: str
    bytes: int
    n_tokens: int
    model: dict[str, Any]  # ModelIdentity without the path
    created_at: datetime
    build_seconds: float = 0.0
    preamble: str = ""
    status: str = ""  # filled in by ``assess``: current, stale, missing, other model
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, with_preamble: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id,
            "cube": self.cube,
            "selection": self.selection.to_json(),
            "units": self.sources,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "n_tokens": self.n_tokens,
            "bytes_per_token": round(self.bytes / self.n_tokens, 1) if self.n_tokens else None,
            "model": self.model,
            "created_at": iso(self.created_at),
            "build_seconds": round(self.build_seconds, 3),
            "status": self.status,
            "reason": self.reason,
        }
        if with_preamble:
            out["preamble"] = self.preamble
        return out

    def matches(self, identity: ModelIdentity) -> bool:
        return (self.model.get("sha256") == identity.sha256 and self.model.get("n_ctx") == identity.n_ctx
                and self.model.get("steering", "") == identity.steering)


def model_label(model: dict[str, Any]) -> str:
    steering = f", steering {str(model['steering'])[:8]}" if model.get("steering") else ""
    return f"{model.get('name', '?')} {str(model.get('sha256', ''))[:8]}, ctx {model.get('n_ctx', '?')}{steering}"


# ---- the records table --------------------------------------------------------


def kv_dir(store: MemoryStore) -> Path:
    from memos_cli.store.layout import TABLES_DIR

    return store.root / TABLES_DIR / KV_DIR


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("cube", pa.string()),
        pa.field("selection", pa.string()),  # JSON
        pa.field("sources", pa.string()),  # JSON
        pa.field("sha256", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("n_tokens", pa.int32()),
        pa.field("model", pa.string()),  # JSON
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("build_seconds", pa.float64()),
        pa.field("preamble", pa.string()),
    ])


def records(store: MemoryStore, cube: str | None = None) -> list[Activation]:
    """Every activation record (of ``cube``), newest first."""
    path = kv_dir(store) / TABLE
    if not (path / "_versions").is_dir():
        return []
    import lance

    rows = lance.dataset(str(path)).to_table().to_pylist()
    out = [
        Activation(
            id=r["id"], cube=r["cube"], selection=Selection.from_json(json.loads(r["selection"])),
            sources=json.loads(r["sources"]), sha256=r["sha256"], bytes=int(r["bytes"]), n_tokens=int(r["n_tokens"]),
            model=json.loads(r["model"]), created_at=r["created_at"], build_seconds=float(r["build_seconds"] or 0.0),
            preamble=r["preamble"] or "",
        )
        for r in rows
        if cube is None or r["cube"] == cube
    ]
    return sorted(out, key=lambda a: a.id, reverse=True)


def get(store: MemoryStore, ident: str) -> Activation:
    """A record by id or unique prefix (4 characters or more)."""
    ident = ident.strip().lower()
    found = [a for a in records(store) if len(ident) >= 4 and a.id.startswith(ident)]
    exact = [a for a in found if a.id == ident]
    if exact:
        return exact[0]
    if not found:
        raise NotFoundError(f"no activation memory with id {ident!r} (see `memos kv list`)")
    if len(found) > 1:
        raise UsageError(f"id prefix {ident!r} is ambiguous; give more characters")
    return found[0]


def write_records(store: MemoryStore, keep: list[Activation]) -> None:
    """Rewrite the (small) records table with these rows (the caller holds the lock)."""
    import lance
    import pyarrow as pa

    rows = {name: [] for name in _schema().names}  # type: dict[str, list[Any]]
    for a in keep:
        rows["id"].append(a.id)
        rows["cube"].append(a.cube)
        rows["selection"].append(json.dumps(a.selection.to_json()))
        rows["sources"].append(json.dumps(a.sources))
        rows["sha256"].append(a.sha256)
        rows["bytes"].append(a.bytes)
        rows["n_tokens"].append(a.n_tokens)
        rows["model"].append(json.dumps(a.model))
        rows["created_at"].append(a.created_at)
        rows["build_seconds"].append(a.build_seconds)
        rows["preamble"].append(a.preamble)
    path = kv_dir(store) / TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    # "create" the first time: "overwrite" of nothing makes Lance warn on stderr (cron mails stderr)
    ds = lance.write_dataset(pa.table(rows, schema=_schema()), str(path), mode="overwrite" if path.exists() else "create")
    ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)



def remove_unreferenced(store: MemoryStore, keep: list[Activation], shas: set[str]) -> None:
    from memos_cli.models.kvcache import file_name

    wanted = {a.sha256 for a in keep}
    for sha in shas - wanted:
        (kv_dir(store) / file_name(sha)).unlink(missing_ok=True)


def remove(store: MemoryStore, ids: list[str]) -> list[Activation]:
    """Delete these records, and their files when no other record uses them."""
    with store.locked():
        current = records(store)
        gone = [a for a in current if a.id in set(ids)]
        keep = [a for a in current if a.id not in set(ids)]
        write_records(store, keep)
        remove_unreferenced(store, keep, {a.sha256 for a in gone})
    return gone


def drop_for_units(store: MemoryStore, ids: set[str]) -> list[Activation]:
    """Delete the activation memories built from any of these units, with their files
    (purge: a cache holds its units' text). The caller holds the lock."""
    current = records(store)
    gone = [a for a in current if any(s["id"] in ids for s in a.sources)]
    if gone:
        keep = [a for a in current if a not in gone]
        write_records(store, keep)
        remove_unreferenced(store, keep, {a.sha256 for a in gone})
    return gone


# ---- check ------------------------------------------------------------------------------


@dataclass
class CacheProblem:
    kind: str  # missing, damaged, orphaned
    message: str
    path: Path | None = None  # the file to remove on repair
    record: str | None = None  # the record to drop on repair


def problems(store: MemoryStore, *, verify: bool = True) -> list[CacheProblem]:
    """Each missing, damaged or orphaned cache file.

    ``verify`` reads every file and checks its hash (about 0.1 s per 50 MB).
    """
    from memos_cli.models import kvcache

    directory = kv_dir(store)
    found: list[CacheProblem] = []
    recs = records(store)
    referenced = {a.sha256 for a in recs}
    for a in recs:
        path = directory / kvcache.file_name(a.sha256)
        where = f"activation memory {a.id} (cube {a.cube})"
        if not path.is_file():
            found.append(CacheProblem("missing", f"{where}: cache file {path.name} is missing", record=a.id))
        elif verify and (why := kvcache.verify(path)):
            found.append(CacheProblem("damaged", f"{where}: {why}", path, a.id))
    if directory.is_dir():
        for entry in sorted(os.listdir(directory)):
            path = directory / entry
            if entry.endswith(kvcache.SUFFIX) and entry.removesuffix(kvcache.SUFFIX) not in referenced:
                found.append(CacheProblem("orphaned", f"cache file {entry} belongs to no activation memory", path))
            elif entry.startswith(".kv-") and entry.endswith(".tmp"):
                found.append(CacheProblem("orphaned", f"temporary file {entry} was left by an interrupted build", path))
    return found


def repair_locked(store: MemoryStore) -> list[str]:
    """Remove orphaned files, and the records (and files) of missing or damaged caches;
    the caller holds the store's lock. Returns what was done."""
    done: list[str] = []
    found = problems(store)
    bad = {p.record for p in found if p.record}
    if bad:
        write_records(store, [a for a in records(store) if a.id not in bad])
        done.append(f"dropped {len(bad)} activation memories whose cache was missing or damaged "
                    "(rebuild them with `memos kv build`)")
    for problem in found:
        if problem.path is not None:
            problem.path.unlink(missing_ok=True)
    orphans = sum(1 for p in found if p.kind == "orphaned")
    if orphans:
        done.append(f"removed {orphans} orphaned cache files")
    return done
