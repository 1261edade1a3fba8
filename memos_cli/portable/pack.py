"""A pack: one file holding a cube (or the whole store), to move it into another store.

A zip file (stdlib ``zipfile``) with:

- ``manifest.json``: the pack's format and store schema, what it holds
  (the cube, counts), the embedding model of its vectors, and the sha256 and
  size of every other member;
- ``units.jsonl``: the units, one per line, every field (``portable.jsonl``);
- ``vectors.f32``: their embeddings, float32 little-endian, one row per line
  of ``units.jsonl`` (left out with ``--no-vectors``): an import into a store
  with the same embedding model embeds nothing;
- ``params/NAME.json`` and ``params/blobs/SHA.safetensors``: the parametric
  memories of the cube, with their blobs.

``memos import PACK`` checks the manifest and every checksum before it
writes anything, then merges by id (``MemoryStore.import_units``):
importing the same pack twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MemoryUnit, iso, utcnow
from memos_cli.portable import jsonl
from memos_cli.store import params as params_store
from memos_cli.store.config import SCHEMA_VERSION

PACK_FORMAT = 1
MANIFEST = "manifest.json"
UNITS = "units.jsonl"
VECTORS = "vectors.f32"
MAGIC = b"PK\x03\x04"
MAX_MANIFEST = 64 * 1024 * 1024


@dataclass
class Pack:
    manifest: dict[str, Any]
    units: list[MemoryUnit]
    wheres: list[str]
    parametric: list[tuple[params_store.ParamRecord, bytes]] = field(default_factory=list)


def is_pack(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def write(path: Path, units: list[MemoryUnit], *, cube: str | None, model: str | None, vectors: bool,
          parametric: list[tuple[params_store.ParamRecord, bytes]]) -> dict[str, Any]:
    """Write the pack (to a temporary name, renamed into place when whole); returns its manifest."""
    import numpy as np

    members: dict[str, bytes] = {}
    members[UNITS] = "".join(json.dumps(jsonl.unit_record(u), ensure_ascii=False) + "\n" for u in units).encode("utf-8")
    with_vectors = vectors and bool(units) and all(u.vector is not None and u.model == model for u in units)
    if with_vectors:
        members[VECTORS] = np.asarray([u.vector for u in units], dtype="<f4").tobytes()
    for record, blob in parametric:
        members[params_store.record_path(record.name)] = record.dumps()
        members[params_store.blob_path(record.blob)] = blob
    manifest = {
        "memos_pack": PACK_FORMAT, "store_schema": SCHEMA_VERSION, "created_at": iso(utcnow()), "cube": cube,
        "counts": {"units": len(units), "params": len(parametric),
                   "blobs": len({r.blob for r, _ in parametric})},
        "embedding": {"model": model, "dim": len(units[0].vector or [])} if with_vectors else None,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in members.items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n", compress_type=zipfile.ZIP_DEFLATED)
            for name, data in members.items():
                packed = name.endswith((".jsonl", ".json"))  # text deflates well; floats and tensors hardly
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED,
                            compresslevel=6 if packed else None)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def read(path: Path) -> Pack:
    """Open and check a pack: its manifest, every member's checksum, then its units and parametric memories."""
    import numpy as np

    name = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{name}: not a readable memos pack ({exc})") from None
    with zf:
        try:
            info = zf.getinfo(MANIFEST)
        except KeyError:
            raise UsageError(f"{name}: not a memos pack (it has no {MANIFEST})") from None
        if info.file_size > MAX_MANIFEST:
            raise UsageError(f"{name}: its {MANIFEST} is too large")
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise UsageError(f"{name}: its {MANIFEST} cannot be read ({exc})") from None
        if not isinstance(manifest, dict) or "memos_pack" not in manifest:
            raise UsageError(f"{name}: its {MANIFEST} is not a memos pack's manifest")
        jsonl.check_header(manifest, f"{name}: {MANIFEST}")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or UNITS not in listed:
            raise UsageError(f"{name}: its manifest lists no {UNITS}")
        present = set(zf.namelist()) - {MANIFEST}
        if present != set(listed):
            extra = sorted(present ^ set(listed))[0]
            raise UsageError(f"{name}: {extra} is {'not listed in' if extra in present else 'missing from'} the "
                             "manifest; the pack is damaged")
        data: dict[str, bytes] = {}
        for member, expect in listed.items():
            try:
                blob = zf.read(member)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # a bad CRC is BadZipFile
                raise UsageError(f"{name}: {member} cannot be read ({exc}); the pack is damaged") from None
            if not isinstance(expect, dict) or hashlib.sha256(blob).hexdigest() != expect.get("sha256"):
                raise UsageError(f"{name}: {member} does not match its checksum in the manifest; the pack is damaged")
            data[member] = blob
    try:
        text = data[UNITS].decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: {UNITS} is not UTF-8") from None
    units, wheres = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"{name}: {UNITS} line {lineno}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{where}: not valid JSON ({exc})") from None
            units.append(jsonl.parse_unit(record, where))
            wheres.append(where)
    counts = manifest.get("counts") or {}
    if counts.get("units") != len(units):
        raise UsageError(f"{name}: the manifest counts {counts.get('units')} units but {UNITS} holds {len(units)}")
    embedding = manifest.get("embedding")
    if VECTORS in data and isinstance(embedding, dict):
        dim = embedding.get("dim")
        if not isinstance(dim, int) or dim <= 0 or len(data[VECTORS]) != 4 * dim * len(units):
            raise UsageError(f"{name}: {VECTORS} does not hold {len(units)} vectors of {dim} dimensions")
        matrix = np.frombuffer(data[VECTORS], dtype="<f4").reshape(len(units), dim)
        for unit, row in zip(units, matrix, strict=True):
            unit.vector, unit.model = row.tolist(), str(embedding.get("model") or "")
    parametric = []
    for member in sorted(data):
        if params_store.name_of(member):
            try:
                record = params_store.loads(data[member], member)
            except Exception as exc:  # StoreError naming the file
                raise UsageError(f"{name}: {exc}") from None
            blob = data.get(params_store.blob_path(record.blob))
            if blob is None:
                raise UsageError(f"{name}: {member} names a blob the pack does not hold")
            parametric.append((record, blob))
    return Pack(manifest, units, wheres, parametric)
