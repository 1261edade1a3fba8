"""Parametric memory on disk: LoRA adapters and steering vectors, their records and their blobs.

Parametric memory is memory, not cache: like the unit files it is versioned
in the store's git history, so ``log``, ``diff``, ``rollback`` and a clone
carry it. Two kinds of files under ``params/``:

- ``params/NAME.json``: the record (``ParamRecord``): what it is, the model
  it was made for, the units it was learned from (ids and versions), whether
  chat applies it by default and at what scale;
- ``params/blobs/<sha256>.safetensors``: the tensors, named by the sha256 of
  the file's bytes. Several records may share a blob; a blob that no record
  names any more is removed in the same commit as its last record.

The blob's safetensors metadata repeats what is needed to use it without
the record (format, kind, the model's GGUF sha256, the sources): a blob
encodes what it was learned from, so ``purge`` of a unit removes, from the
store and from all of history, every record and blob learned from it.

This module only stores and checks; learning (numpy) and applying
(llama.cpp) are ``memos_cli.parametric``'s. numpy and safetensors are
imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from memos_cli.errors import NotFoundError, StoreError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import check_name, default_user, is_unit_id, iso, loads_strict, utcnow

if TYPE_CHECKING:
    import numpy as np

    from memos_cli.store.commit import Transaction
    from memos_cli.store.store import MemoryStore

PARAMS_DIR = "params"
BLOBS_DIR = f"{PARAMS_DIR}/blobs"
BLOB_SUFFIX = ".safetensors"
FORMAT = "memos-param"
FORMAT_VERSION = "1"
KINDS = ("lora", "steer")
OPS = {"lora": "learn", "steer": "steer"}  # the commit's op when a record is saved
STATUSES = ("current", "stale", "other model")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # always fullmatch
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_LORA_RE = re.compile(r"blk\.(\d+)\.(.+)\.lora_(a|b)")
_LAYERS_RE = re.compile(r"(\d+)-(\d+)")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


# ---- names and paths ------------------------------------------------------------------


def check_param_name(name: object) -> str:
    """A parametric memory's name: 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit.

    Input is taken case-insensitively (``Prefs`` is ``prefs``): names become file names, and
    two records that differ only in case would collide on a case-insensitive file system.
    """
    value = name.strip().lower() if isinstance(name, str) else name
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise UsageError(f"bad name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def record_path(name: str) -> str:
    """The record's file, relative to the store's root (a git path)."""
    return f"{PARAMS_DIR}/{name}.json"


def blob_path(sha: str) -> str:
    return f"{BLOBS_DIR}/{sha}{BLOB_SUFFIX}"


def name_of(path: str) -> str | None:
    """The record name a git path names (``params/NAME.json``), or None for any other file."""
    parts = path.split("/")
    if len(parts) != 2 or parts[0] != PARAMS_DIR or not parts[1].endswith(".json"):
        return None
    name = parts[1][:-5]
    return name if _NAME_RE.fullmatch(name) else None


def sha_of(path: str) -> str | None:
    """The sha256 a blob's git path names, or None for any other file."""
    head, _, tail = path.rpartition("/")
    sha = tail.removesuffix(BLOB_SUFFIX)
    return sha if head == BLOBS_DIR and tail.endswith(BLOB_SUFFIX) and _SHA_RE.fullmatch(sha) else None


def is_temp(rel: str) -> bool:
    """A file under ``params/`` where a write put bytes before renaming them into place."""
    name = rel.rpartition("/")[2]
    return rel.startswith(PARAMS_DIR + "/") and name.startswith(".") and name.endswith(".tmp")


# ---- the record --------------------------------------------------------------------------


def _finite(value: object, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"bad {what} {value!r}: use a finite number")
    return float(value)


def _number(value: object, what: str) -> float:
    out = _finite(value, what)
    assert out is not None
    return out


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"bad {what} {value!r}: use a whole number from 1")
    return value


def _check_model(model: object) -> dict[str, Any]:
    if not isinstance(model, dict):
        raise UsageError("model must be a JSON object with sha256, name, arch, n_layer and n_embd")
    sha = model.get("sha256")
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise UsageError(f"bad model sha256 {sha!r}: use the GGUF file's sha256 (64 hex digits)")
    for key in ("name", "arch"):
        if not isinstance(model.get(key, ""), str):
            raise UsageError(f"bad model {key} {model.get(key)!r}: use a string")
    return {"sha256": sha, "name": model.get("name", ""), "arch": model.get("arch", ""),
            "n_layer": _count(model.get("n_layer"), "model n_layer"), "n_embd": _count(model.get("n_embd"), "model n_embd")}


def _check_sources(sources: object) -> list[dict[str, Any]]:
    if not isinstance(sources, list):
        raise UsageError("sources must be a list of {\"id\", \"version\"} objects")
    out = []
    for s in sources:
        if not isinstance(s, dict) or not isinstance(s.get("id"), str) or not is_unit_id(s["id"]):
            raise UsageError(f"bad source {s!r}: use {{\"id\": UNIT_ID, \"version\": N}}")
        out.append({"id": s["id"], "version": _count(s.get("version"), f"version of source {s['id']}")})
    return out


def _plain_json(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be plain JSON (no NaN or Infinity)") from None
    return value


@dataclass
class ParamRecord:
    """The record of one parametric memory (``params/NAME.json``)."""

    name: str
    kind: str  # "lora" or "steer"
    model: dict[str, Any]  # {"sha256", "name", "arch", "n_layer", "n_embd"}
    blob: str = ""  # sha256 of the blob's bytes; set by ``save``
    cube: str = "default"
    sources: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "version"}]: the units it was learned from
    enabled: bool = False  # applied by chat by default (still subject to its gate)
    scale: float = 1.0  # default scale (lora) or calibrated strength (steer)
    gate: float | None = None  # routing threshold (lora)
    hparams: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    report: dict[str, Any] = field(default_factory=dict)  # evaluation and gate figures, free-form
    created_at: str = ""  # ISO 8601, UTC
    user: str = ""

    def __post_init__(self) -> None:
        if not self.created_at:
            self.created_at = iso(utcnow()) or ""
        if not self.user:
            self.user = default_user()

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def dumps(self) -> bytes:
        """The record file's bytes: sorted keys, indented, one trailing newline."""
        return (json.dumps(self.to_json(), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: object) -> ParamRecord:
        """A record from its JSON form, validated; ``UsageError`` naming the first bad field."""
        if not isinstance(data, dict):
            raise UsageError("a parametric memory's record must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r}")
        for key in ("name", "kind", "model"):
            if key not in data:
                raise UsageError(f"missing field {key!r}")
        kind = data["kind"]
        if kind not in KINDS:
            raise UsageError(f"bad kind {kind!r}: use lora or steer")
        blob = data.get("blob", "")
        if blob and (not isinstance(blob, str) or not _SHA_RE.fullmatch(blob)):
            raise UsageError(f"bad blob {blob!r}: use a sha256 (64 hex digits)")
        enabled = data.get("enabled", False)
        if not isinstance(enabled, bool):
            raise UsageError(f"bad enabled {enabled!r}: use true or false")
        created = data.get("created_at") or ""
        if not isinstance(created, str):
            raise UsageError(f"bad created_at {created!r}: use an ISO 8601 time")
        return cls(
            name=check_param_name(data["name"]),
            kind=kind,
            model=_check_model(data["model"]),
            blob=blob,
            cube=check_name(data.get("cube", "default"), "cube"),
            sources=_check_sources(data.get("sources", [])),
            enabled=enabled,
            scale=_number(data.get("scale", 1.0), "scale"),
            gate=_finite(data.get("gate"), "gate", optional=True),
            hparams=_plain_json(data.get("hparams", {}), "hparams"),
            loss=_finite(data.get("loss"), "loss", optional=True),
            report=_plain_json(data.get("report", {}), "report"),
            created_at=created,
            user=check_name(data.get("user") or "user", "user"),
        )


def loads(data: bytes, path: str) -> ParamRecord:
    """A record from its file's bytes; ``StoreError`` naming the file when it is not valid."""
    try:
        record = ParamRecord.from_json(loads_strict(data.decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None
    except UsageError as exc:
        raise StoreError(f"{path}: {exc}") from None
    if record_path(record.name) != path:
        raise StoreError(f"{path}: holds the record of {record.name}, whose file is {record_path(record.name)}")
    return record


# ---- the blob ----------------------------------------------------------------------------


def metadata_for(record: ParamRecord, **extra: object) -> dict[str, str]:
    """The blob metadata a record implies (model, sources, hyper-parameters), plus ``extra``
    (``rank``, ``alpha`` for a LoRA; ``layers`` for a steering vector), for ``encode_blob``."""
    meta: dict[str, object] = {
        "model_sha256": record.model["sha256"], "arch": record.model.get("arch", ""),
        "n_layer": record.model["n_layer"], "n_embd": record.model["n_embd"],
        "sources": record.sources, "hparams": record.hparams, **extra}
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def encode_blob(kind: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A blob's bytes: the tensors as float32 safetensors, with ``format``, ``version`` and ``kind``
    added to ``metadata`` (whose values must be strings: JSON for lists and objects).

    The same tensors and metadata always give the same bytes, so the same sha256: the header is
    written here with its keys sorted (``safetensors.numpy.save`` orders the metadata at random),
    padded with spaces to 8 bytes, the tensors' data in the order of their names, little-endian.
    Any safetensors reader reads it.
    """
    import numpy as np

    if kind not in KINDS:
        raise UsageError(f"bad kind {kind!r}: use lora or steer")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise UsageError(f"blob metadata {bad[0]!r} is not a string")
    meta = {**metadata, "format": FORMAT, "version": FORMAT_VERSION, "kind": kind}
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(tensors[name])), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _header(data: bytes) -> dict[str, Any]:
    """The safetensors JSON header, its tensors' offsets checked against the file's length."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > _MAX_HEADER or 8 + size > len(data):
        raise ValueError("its header runs past the end of the file")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    body = len(data) - 8 - size
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"tensor {name} has no data offsets")
        end = max(end, offsets[1])
    if end > body:
        raise ValueError(f"its tensors need {end} bytes of data, it has {body}")
    return header


def decode_blob(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a blob; ``UsageError`` when it is not a readable safetensors file."""
    from safetensors.numpy import load

    try:
        header = _header(data)
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"not a readable safetensors file ({' '.join(str(exc).split())})") from None
    meta = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in meta.items()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_blob(data: bytes, expected_sha: str | None, record: ParamRecord) -> list[str]:
    """What is wrong with a blob for this record, one short sentence each ([] when it is sound).

    ``expected_sha``: the sha256 it is named by (None: not checked).
    """
    import numpy as np

    problems: list[str] = []
    if expected_sha is not None and (actual := sha256(data)) != expected_sha:
        problems.append(f"its sha256 is {actual[:12]}…, not the {expected_sha[:12]}… it is named by (tampered with or truncated)")
    try:
        header = _header(data)
    except ValueError as exc:
        return problems + [f"it is not a readable safetensors file ({' '.join(str(exc).split())})"]
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        problems.append(f"its format is {meta.get('format')!r} version {meta.get('version')!r}, "
                        f"not {FORMAT!r} version {FORMAT_VERSION!r}")
    if meta.get("kind") != record.kind:
        problems.append(f"it holds a {meta.get('kind')!r} but the record says {record.kind!r}")
    if meta.get("model_sha256") != record.model.get("sha256"):
        problems.append(f"it was made for model {str(meta.get('model_sha256'))[:12]}…, the record says "
                        f"{str(record.model.get('sha256'))[:12]}…")
    n_layer, n_embd = record.model.get("n_layer"), record.model.get("n_embd")
    for key, want in (("n_layer", n_layer), ("n_embd", n_embd)):
        if meta.get(key) != str(want):
            problems.append(f"its {key} is {meta.get(key)!r}, the record's model has {want}")
    specs = {k: v for k, v in header.items() if k != "__metadata__"}
    dtypes = {k: v.get("dtype") if isinstance(v, dict) else None for k, v in specs.items()}
    not_f32 = sorted(k for k, d in dtypes.items() if d != "F32")
    if not_f32:
        return problems + [f"tensor {not_f32[0]} is {dtypes[not_f32[0]]}, not float32"]
    try:
        from safetensors.numpy import load

        tensors = load(data)
    except Exception as exc:
        return problems + [f"its tensors cannot be read ({' '.join(str(exc).split())})"]
    if record.kind == "lora":
        problems += _lora_problems(tensors, meta, n_layer if isinstance(n_layer, int) else None)
    else:
        problems += _steer_problems(tensors, meta, n_layer, n_embd)
    bad = sorted(k for k, t in tensors.items() if not np.isfinite(t).all())
    if bad:
        problems.append(f"tensor {bad[0]} has values that are not finite")
    return problems


def _lora_problems(tensors: dict[str, np.ndarray], meta: dict[str, Any], n_layer: int | None) -> list[str]:
    problems: list[str] = []
    try:
        rank = int(meta.get("rank", ""))
        if rank < 1:
            raise ValueError
    except ValueError:
        return [f"its rank metadata {meta.get('rank')!r} is not a whole number from 1"]
    try:
        alpha = float(meta.get("alpha", ""))
        if not math.isfinite(alpha):
            raise ValueError
    except ValueError:
        problems.append(f"its alpha metadata {meta.get('alpha')!r} is not a number")
    if not tensors:
        problems.append("it holds no tensors")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        match = _LORA_RE.fullmatch(name)
        if match is None:
            problems.append(f"tensor {name} is not named blk.N.<tensor>.lora_a or .lora_b")
            continue
        if n_layer is not None and int(match.group(1)) >= n_layer:
            problems.append(f"tensor {name} is for layer {match.group(1)}, past the model's {n_layer} layers")
        pairs.setdefault(name[: -len(".lora_a")], {})[match.group(3)] = t
    for base, pair in sorted(pairs.items()):
        if set(pair) != {"a", "b"}:
            missing = "lora_b" if "a" in pair else "lora_a"
            problems.append(f"{base} has no {missing}")
            continue
        a, b = pair["a"], pair["b"]
        if a.ndim != 2 or b.ndim != 2:
            problems.append(f"{base}: lora_a and lora_b must be matrices, not shapes {a.shape} and {b.shape}")
        elif a.shape[0] != rank or b.shape[1] != rank:
            problems.append(f"{base}: shapes {a.shape} and {b.shape} do not have the rank {rank} of its metadata")
        elif a.shape[1] < 1 or b.shape[0] < 1:
            problems.append(f"{base}: shapes {a.shape} and {b.shape} have an empty dimension")
    return problems


def _steer_problems(tensors: dict[str, np.ndarray], meta: dict[str, Any], n_layer: object, n_embd: object) -> list[str]:
    problems: list[str] = []
    extra = sorted(set(tensors) - {"direction"})
    if extra:
        problems.append(f"it holds tensor {extra[0]}; a steering vector holds only 'direction'")
    direction = tensors.get("direction")
    want = (n_layer - 1, n_embd) if isinstance(n_layer, int) and isinstance(n_embd, int) else None
    if direction is None:
        problems.append("it has no 'direction' tensor")
    elif want is not None and tuple(direction.shape) != want:
        problems.append(f"its direction has shape {tuple(direction.shape)}, not {want} (n_layer - 1, n_embd)")
    last = n_layer - 1 if isinstance(n_layer, int) else None
    layers = _LAYERS_RE.fullmatch(str(meta.get("layers", "")))
    if layers is None or not 1 <= int(layers.group(1)) <= int(layers.group(2)) or (
            last is not None and int(layers.group(2)) > last):
        problems.append(f"its layers metadata {meta.get('layers')!r} is not a range FIRST-LAST within 1-{last}")
    return problems


# ---- reading --------------------------------------------------------------------------------


def _load_all(store: MemoryStore) -> tuple[dict[str, ParamRecord], dict[str, str]]:
    """Every record in the work tree by name, and the files that are not valid records (path -> why)."""
    directory = store.root / PARAMS_DIR
    found: dict[str, ParamRecord] = {}
    broken: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found, broken
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        rel = f"{PARAMS_DIR}/{entry}"
        try:
            record = loads((store.root / rel).read_bytes(), rel)
        except OSError as exc:
            broken[rel] = f"{rel}: cannot be read ({exc.strerror or exc})"
            continue
        except StoreError as exc:
            broken[rel] = str(exc)
            continue
        found[record.name] = record
    return found, broken


def records(store: MemoryStore, cube: str | None = None) -> list[ParamRecord]:
    """The parametric memories (of ``cube``), sorted by name, as the work tree has them (HEAD's,
    as memos writes them); ``StoreError`` when a record file is damaged (`memos check` lists them)."""
    found, broken = _load_all(store)
    if broken:
        first = next(iter(broken.values()))
        name = (name_of(next(iter(broken))) or "NAME")
        raise StoreError(f"{first}; fix the file, or remove it with `memos param rm {name}`")
    return [r for _, r in sorted(found.items()) if cube is None or r.cube == cube]


def get(store: MemoryStore, name: str) -> ParamRecord:
    name = check_param_name(name)
    rel = record_path(name)
    try:
        data = (store.root / rel).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no parametric memory named {name} (see `memos param list`)") from None
    except OSError as exc:
        raise StoreError(f"{rel}: cannot be read ({exc.strerror or exc})") from None
    return loads(data, rel)


def blob_bytes(store: MemoryStore, record: ParamRecord) -> int | None:
    """The size of the record's blob file, or None when it is missing."""
    try:
        return os.stat(store.root / blob_path(record.blob)).st_size
    except OSError:
        return None


def read_blob(store: MemoryStore, record: ParamRecord) -> bytes:
    """The record's blob, its sha256 and contents checked; ``StoreError`` in one line when damaged."""
    rel = blob_path(record.blob)
    try:
        data = (store.root / rel).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"blob of {record.name} is missing ({rel}); remove it with `memos param rm {record.name}`") from None
    except OSError as exc:
        raise StoreError(f"blob of {record.name} cannot be read ({rel}: {exc.strerror or exc})") from None
    problems = verify_blob(data, record.blob, record)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise StoreError(f"blob of {record.name} is damaged: {problems[0]}{more}; "
                         f"remove it with `memos param rm {record.name}`")
    return data


def statuses(store: MemoryStore, recs: list[ParamRecord], model_sha256: str | None) -> list[tuple[str, str]]:
    """(status, reason) of each record, reading all their source units in one batch:

    - ``other model``: made for another model than ``model_sha256`` (when given);
    - ``stale``: a source unit was forgotten, archived, has expired, is gone, or has
      another version than the one learned;
    - ``current`` otherwise.
    """
    ids = sorted({s["id"] for r in recs for s in r.sources})
    units = {u.id: u for u in store.get_many(ids)} if ids else {}
    now = utcnow()
    out: list[tuple[str, str]] = []
    for r in recs:
        if model_sha256 is not None and r.model.get("sha256") != model_sha256:
            out.append(("other model", f"made for {r.model.get('name') or 'another model'} "
                                       f"({str(r.model.get('sha256'))[:12]}), not the chat model ({model_sha256[:12]})"))
            continue
        why = []
        for s in r.sources:
            unit = units.get(s["id"])
            if unit is None:
                why.append(f"unit {s['id']} is gone")
            elif unit.status == "deleted":
                why.append(f"unit {s['id']} was forgotten")
            elif unit.status != "active":
                why.append(f"unit {s['id']} is {unit.status}")
            elif unit.expires_at is not None and unit.expires_at <= now:
                why.append(f"unit {s['id']} has expired")
            elif unit.version != s["version"]:
                why.append(f"unit {s['id']} changed (version {unit.version}, learned from version {s['version']})")
        if why:
            out.append(("stale", why[0] + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")))
        else:
            out.append(("current", ""))
    return out


def status(store: MemoryStore, record: ParamRecord, model_sha256: str | None) -> tuple[str, str]:
    """(status, reason) of one record; see ``statuses`` (which takes many at once)."""
    return statuses(store, [record], model_sha256)[0]


# ---- writing ------------------------------------------------------------------------------


def _write_file(store: MemoryStore, rel: str, data: bytes) -> None:
    """Write a file under ``params/`` atomically and privately (0600, directories 0700)."""
    target = store.root / rel
    for directory in (store.root / PARAMS_DIR, store.root / BLOBS_DIR):
        if directory in target.parents:
            directory.mkdir(mode=files.DIR_MODE, exist_ok=True)
    tmp = store.root / files.temp_path(rel)
    files.write_private(tmp, data)
    os.replace(tmp, target)


def _refuse_hand_edited(store: MemoryStore, paths: list[str]) -> None:
    """Under the lock: refuse to overwrite or remove records changed and not committed (a blob is
    named by its content: one that differs from it is damaged, and may be replaced or removed)."""
    edited = sorted(store.repo.modified([p for p in paths if name_of(p)]))
    if edited:
        raise StoreError(
            f"{edited[0]} has changes not committed with git (edited by hand?); memos will not overwrite them: "
            f"commit them (git -C {store.root} commit -a) or undo them (git -C {store.root} checkout -- {edited[0]}), "
            "then try again; nothing was written")


def _unused_blobs(kept: dict[str, ParamRecord], candidates: set[str]) -> list[str]:
    """Those of these blob shas that no kept record names."""
    used = {r.blob for r in kept.values()}
    return sorted(sha for sha in candidates if sha and sha not in used)


def _source_problem(store: MemoryStore, record: ParamRecord) -> str | None:
    """Why the record's sources are not the units as they are now, or None."""
    if not record.sources:
        return None
    state, reason = status(store, record, None)
    return reason if state == "stale" else None


def save(store: MemoryStore, record: ParamRecord, blob: bytes, *, replace: bool = False,
         check_sources: bool = True) -> ParamRecord:
    """Store a parametric memory: its blob and its record, in one commit (op ``learn`` for a LoRA,
    ``steer`` for a steering vector). Returns the record, its ``blob`` set to the blob's sha256.

    The blob is verified against the record first (``UsageError`` naming the first problem).
    An existing name is refused unless ``replace``; the blob it no longer uses goes with it.
    With ``check_sources`` (the default), the source units must still be at the versions
    given, checked under the lock: a unit changed while learning refuses the save.
    """
    record = ParamRecord.from_json({**record.to_json(), "blob": sha256(blob)})  # validates every field
    problems = verify_blob(blob, None, record)
    if problems:
        raise UsageError(f"bad blob for {record.name}: {problems[0]}")
    rel = record_path(record.name)
    if not replace and (store.root / rel).exists():  # again under the lock
        raise UsageError(f"a parametric memory named {record.name} exists; use --replace to replace it")
    with store.transaction(OPS[record.kind], cube=record.cube, user=record.user) as txn:
        current, _ = _load_all(store)
        old = current.get(record.name)
        if (store.root / rel).exists() and not replace:
            raise UsageError(f"a parametric memory named {record.name} exists; use --replace to replace it")
        if check_sources and (why := _source_problem(store, record)):
            raise StoreError(f"the memories {record.name} was learned from are not as they were when learning "
                             f"started ({why}); learn it again; nothing was saved")
        _put(store, txn, current, record, blob)
        what = "LoRA adapter" if record.kind == "lora" else "steering vector"
        txn.summary = f"{what} {record.name}" + (" (replaced)" if old else "")
        txn.details.append(f"{record.name}: {what} for {record.model.get('name') or 'model'} "
                           f"{record.model['sha256'][:12]}, blob {record.blob[:12]}, {len(blob)} bytes, "
                           f"{len(record.sources)} source units, scale {record.scale:g}"
                           + (", enabled" if record.enabled else ""))
        if record.sources:
            txn.details.append("sources: " + " ".join(f"{s['id']}@{s['version']}" for s in record.sources))
        txn.trailers["Memos-Param"] = record.name
    return record


def _put(store: MemoryStore, txn: Transaction, current: dict[str, ParamRecord], record: ParamRecord,
         blob: bytes) -> None:
    """Under the lock, inside ``txn``: write a record and its blob (``current``: the records as they are,
    updated here), and remove the blob the record's earlier version used when no record names it now."""
    old = current.get(record.name)
    current[record.name] = record
    drop = _unused_blobs(current, {old.blob} if old else set())
    rel, brel = record_path(record.name), blob_path(record.blob)
    paths = [rel, brel, *(blob_path(sha) for sha in drop)]
    _refuse_hand_edited(store, paths)
    store._note_paths(txn, paths)
    target = store.root / brel
    if not target.is_file() or sha256(target.read_bytes()) != record.blob:  # shared, unless damaged
        _write_file(store, brel, blob)
    _write_file(store, rel, record.dumps())
    for sha in drop:
        (store.root / blob_path(sha)).unlink(missing_ok=True)


def merge_in(store: MemoryStore, txn: Transaction, incoming: list[tuple[ParamRecord, bytes]]) -> list[str]:
    """Under the lock, inside ``txn``: bring in parametric memories by name (an import of a pack).

    A name the store lacks is added with its blob; one it has is replaced only by a record made
    later (``created_at``), else kept. Each blob is verified against its record first
    (``UsageError``). Returns the names written.
    """
    for record, blob in incoming:
        problems = verify_blob(blob, record.blob, record)
        if problems:
            raise UsageError(f"bad blob for {record.name}: {problems[0]}")
    current, _ = _load_all(store)
    written: list[str] = []
    for record, blob in incoming:
        old = current.get(record.name)
        if old is not None and (old.dumps() == record.dumps() or old.created_at >= record.created_at):
            continue
        _put(store, txn, current, record, blob)
        written.append(record.name)
    return written


def _cube_of(recs: list[ParamRecord]) -> str:
    return ",".join(sorted({r.cube for r in recs})) or "default"


def remove(store: MemoryStore, names: list[str]) -> list[ParamRecord]:
    """Remove these parametric memories, and the blobs no other record uses, in one commit
    (op ``param-rm``). Every name must exist before anything changes. A record whose file is
    damaged can be removed too (its blob then stays until ``memos check`` points at it)."""
    if not names:
        raise UsageError("give the names of the parametric memories to remove")
    wanted = list(dict.fromkeys(check_param_name(n) for n in names))
    for name in wanted:
        if not (store.root / record_path(name)).is_file():
            raise NotFoundError(f"no parametric memory named {name} (see `memos param list`)")
    found, _ = _load_all(store)
    with store.transaction("param-rm", cube=_cube_of([found[n] for n in wanted if n in found])) as txn:
        current, broken = _load_all(store)
        missing = [n for n in wanted if n not in current and record_path(n) not in broken]
        if missing:
            raise NotFoundError(f"no parametric memory named {missing[0]} (see `memos param list`)")
        gone = [current.pop(n) for n in wanted if n in current]
        # A damaged record left behind may name any blob: then every blob stays (`memos check` finds orphans).
        keep_all = any(rel not in {record_path(n) for n in wanted} for rel in broken)
        drop = [] if keep_all else _unused_blobs(current, {r.blob for r in gone})
        paths = [record_path(n) for n in wanted] + [blob_path(sha) for sha in drop]
        _refuse_hand_edited(store, paths)
        store._note_paths(txn, paths)
        for rel in paths:
            (store.root / rel).unlink(missing_ok=True)
        txn.summary = f"removed {_names(wanted)}"
        txn.details.append(f"{len(drop)} blob{'s' if len(drop) != 1 else ''} no longer used removed")
        txn.trailers["Memos-Param"] = ",".join(wanted)
    return gone


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"parametric memor{'y' if len(names) == 1 else 'ies'} {shown}"


def _update(store: MemoryStore, names: list[str], change: str, apply: Callable[[ParamRecord], bool]) -> list[ParamRecord]:
    """Rewrite the records ``apply`` changes (it returns True when it changed one), one commit (op
    ``param``); none when nothing changes. Returns the changed records."""
    wanted = list(dict.fromkeys(check_param_name(n) for n in names))
    if not wanted:
        raise UsageError("give the names of parametric memories")
    before = [get(store, n) for n in wanted]  # every name must exist, before anything changes
    probe = [ParamRecord.from_json(r.to_json()) for r in before]
    if not any(apply(r) for r in probe):
        return []
    with store.transaction("param", cube=_cube_of(before)) as txn:
        changed = [r for r in (get(store, n) for n in wanted) if apply(r)]  # as of now, under the lock
        paths = [record_path(r.name) for r in changed]
        _refuse_hand_edited(store, paths)
        store._note_paths(txn, paths)
        for r in changed:
            _write_file(store, record_path(r.name), r.dumps())
        txn.summary = f"{change} {_names([r.name for r in changed])}"
        txn.trailers["Memos-Param"] = ",".join(r.name for r in changed)
    return changed


def set_enabled(store: MemoryStore, names: list[str], enabled: bool) -> list[ParamRecord]:
    """Enable (chat applies them by default) or disable parametric memories, in one commit;
    returns those changed (none already in that state: no commit)."""
    if not isinstance(enabled, bool):
        raise UsageError(f"bad enabled {enabled!r}: use true or false")

    def apply(r: ParamRecord) -> bool:
        if r.enabled == enabled:
            return False
        r.enabled = enabled
        return True

    return _update(store, names, "enabled" if enabled else "disabled", apply)


def set_scale(store: MemoryStore, name: str, scale: float) -> ParamRecord:
    """Set a parametric memory's default scale (a LoRA) or strength (a steering vector), in one
    commit (none when it is that already); returns the record."""
    value = _number(scale, "scale")

    def apply(r: ParamRecord) -> bool:
        if r.scale == value:
            return False
        r.scale = value
        return True

    changed = _update(store, [name], f"scale {value:g} for", apply)
    return changed[0] if changed else get(store, name)


# ---- purge, check, history ---------------------------------------------------------------


def _mentions(record_json: object, ids: set[str]) -> bool:
    """Does a record (parsed leniently: any version in history) name one of these units as a source?"""
    if not isinstance(record_json, dict) or not isinstance(record_json.get("sources"), list):
        return False
    return any(isinstance(s, dict) and s.get("id") in ids for s in record_json["sources"])


def drop_for_units(store: MemoryStore, ids: set[str], txn: Transaction) -> list[str]:
    """Purge: remove from the work tree what ``find_for_units`` finds, inside ``txn`` (the caller
    holds the lock). Returns the names of the records removed."""
    names, paths = find_for_units(store, ids)
    if paths:
        store._note_paths(txn, paths)
    for rel in paths:
        (store.root / rel).unlink(missing_ok=True)
    return names


def find_for_units(store: MemoryStore, ids: set[str]) -> tuple[list[str], list[str]]:
    """Purge: the records in the work tree learned from one of these units (by their sources, or
    their blob's metadata), the records that share a blob with one, and those blobs: (names, paths)."""
    directory = store.root / PARAMS_DIR
    if not directory.is_dir():
        return [], []
    loose: dict[str, dict[str, Any]] = {}
    for entry in sorted(os.listdir(directory)):
        rel = f"{PARAMS_DIR}/{entry}"
        if name_of(rel) is None:
            continue
        try:
            data = json.loads((store.root / rel).read_bytes())
        except (OSError, ValueError):
            continue  # not readable as a record: `memos check` reports it
        loose[rel] = data if isinstance(data, dict) else {}
    hit = {rel for rel, data in loose.items() if _mentions(data, ids)}
    blobs = {str(loose[rel].get("blob")) for rel in hit}
    blobs |= {sha for sha in _blob_files(store) if _blob_mentions(store.root / blob_path(sha), ids)}
    hit |= {rel for rel, data in loose.items() if data.get("blob") in blobs}
    paths = sorted(hit) + [blob_path(sha) for sha in sorted(blobs) if sha_of(blob_path(sha))]
    return sorted(n for rel in hit if (n := name_of(rel))), paths


def _blob_files(store: MemoryStore) -> list[str]:
    try:
        return sorted(sha for e in os.listdir(store.root / BLOBS_DIR) if (sha := sha_of(f"{BLOBS_DIR}/{e}")))
    except FileNotFoundError:
        return []


def _meta_sources(data: bytes) -> set[str]:
    """The unit ids in a blob's ``sources`` metadata (none when it cannot be read)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        sources = json.loads(meta.get("sources", "[]"))
        return {str(s.get("id")) for s in sources if isinstance(s, dict)}
    except (ValueError, struct.error, AttributeError, TypeError):
        return set()


def _blob_mentions(path: os.PathLike[str], ids: set[str]) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            (size,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            data = head + fh.read(min(size, _MAX_HEADER))
    except OSError:
        return False
    return bool(_meta_sources(data) & ids)


@dataclass
class HistoryDrops:
    """What a purge removes from history for parametric memory."""

    paths: list[str] = field(default_factory=list)  # blob files, by path (content-addressed: every version is the one)
    strip: list[str] = field(default_factory=list)  # git blob ids of record versions learned from a purged unit
    names: list[str] = field(default_factory=list)  # the records those versions were of
    commits: set[str] = field(default_factory=set)  # commits that added or removed any of these
    objects: set[str] = field(default_factory=set)  # every git blob object that goes


def history_drops(store: MemoryStore, ids: set[str]) -> HistoryDrops:
    """Every blob file learned from one of these units (as a record's version or the blob's own
    metadata says), and every version of a record, in all of history, that names one of them as
    a source or uses such a blob (by git object id: other versions of the same name are kept)."""
    repo = store.repo
    out = HistoryDrops()
    if not repo.run(["log", "--all", "--format=%H", "-n1", "--", PARAMS_DIR]).strip():
        return out
    entries: list[tuple[str, str, str, str]] = []  # (commit, old object, new object, path)
    commit = ""
    for line in repo.run(["log", "--all", "--format=%x00%H", "--raw", "--no-abbrev", "--no-renames", "--",
                          PARAMS_DIR]).splitlines():
        if line.startswith("\0"):
            commit = line[1:].strip()
        elif line.startswith(":"):
            meta, _, path = line.partition("\t")
            parts = meta.split()
            entries.append((commit, parts[2], parts[3], path))
    zero = "0" * 40
    record_objects = {o for _, a, b, p in entries if name_of(p) for o in (a, b) if o != zero}
    blob_objects = {(o, p) for _, a, b, p in entries if sha_of(p) for o in (a, b) if o != zero}
    versions: dict[str, dict[str, Any]] = {}
    for obj, data in repo.cat(sorted(record_objects)):
        try:
            parsed = json.loads(data or b"")
        except ValueError:
            continue
        if isinstance(parsed, dict):
            versions[obj] = parsed
    shas = {str(v.get("blob")) for v in versions.values() if _mentions(v, ids)}
    contents = dict(repo.cat(sorted({o for o, _ in blob_objects})))
    for obj, path in blob_objects:
        data = contents.get(obj)
        if data is not None and _meta_sources(data) & ids:
            shas.add(path.rpartition("/")[2].removesuffix(BLOB_SUFFIX))
    # Every version learned from the units, and every version that uses a blob that goes.
    strip = {obj for obj, v in versions.items() if _mentions(v, ids) or v.get("blob") in shas}
    names = {str(versions[obj].get("name")) for obj in strip}
    drop_paths = {blob_path(sha) for sha in shas if _SHA_RE.fullmatch(sha)}
    out.paths = sorted(drop_paths)
    out.strip = sorted(strip)
    out.names = sorted(names)
    for c, a, b, p in entries:
        if p in drop_paths or a in strip or b in strip:
            out.commits.add(c)
            out.objects.update(o for o in (a, b) if o != zero)
    return out


def inspect(store: MemoryStore) -> tuple[int, list[str]]:
    """``memos check``: (how many records were read, the problems): each record that cannot be
    read, each blob missing or failing ``verify_blob``, each blob no record names, each stray file
    under ``params/``."""
    found, broken = _load_all(store)
    out = [f"{why}; fix the file or remove it with `memos param rm {name_of(rel) or 'NAME'}`"
           for rel, why in broken.items()]
    for record in found.values():
        rel = blob_path(record.blob)
        try:
            data = (store.root / rel).read_bytes()
        except OSError:
            out.append(f"{record.name}: blob {rel} is missing; remove it with `memos param rm {record.name}`")
            continue
        for problem in verify_blob(data, record.blob, record):
            out.append(f"{record.name}: blob {rel}: {problem}; remove it with `memos param rm {record.name}`")
    used = {r.blob for r in found.values()}
    if not broken:  # a damaged record may name any blob
        for sha in _blob_files(store):
            if sha not in used:
                out.append(f"blob {blob_path(sha)} belongs to no parametric memory; remove it with "
                           f"`git -C {store.root} rm {blob_path(sha)}`")
    for directory in (PARAMS_DIR, BLOBS_DIR):
        try:
            entries = sorted(os.listdir(store.root / directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            rel = f"{directory}/{entry}"
            if rel == BLOBS_DIR or is_temp(rel) or (directory == PARAMS_DIR and entry.endswith(".json")) or sha_of(rel):
                continue
            out.append(f"{rel} is not a record (params/NAME.json) or a blob (params/blobs/SHA256.safetensors)")
    return len(found), out


@dataclass
class ParamChange:
    """How one record differs between two states of the store."""

    name: str
    change: str  # "added", "removed" or "changed"
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @property
    def fields(self) -> list[str]:
        if self.old is None or self.new is None:
            return []
        return sorted(k for k in set(self.old) | set(self.new) if self.old.get(k) != self.new.get(k))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "change": self.change}
        if self.change == "changed":
            assert self.old is not None and self.new is not None
            out["fields"] = {f: {"old": self.old.get(f), "new": self.new.get(f)} for f in self.fields}
        else:
            out["record"] = self.new if self.new is not None else self.old
        return out


def changes(store: MemoryStore, old: str, new: str) -> list[ParamChange]:
    """The records added, removed and changed from commit ``old`` (or the empty tree) to ``new``."""
    repo = store.repo
    paths = [p for _, p in repo.changed(old, new, PARAMS_DIR) if name_of(p)]
    if not paths:
        return []

    def read(rev: str) -> dict[str, dict[str, Any]]:
        out = {}
        for spec, data in repo.cat(f"{rev}:{p}" for p in paths):
            try:
                parsed = json.loads(data) if data is not None else None
            except ValueError:
                parsed = {"damaged": True}
            if parsed is not None:
                out[spec.split(":", 1)[1]] = parsed if isinstance(parsed, dict) else {"damaged": True}
        return out

    from memos_cli.store.repo import EMPTY_TREE

    before = read(old) if old != EMPTY_TREE else {}
    after = read(new)
    found = []
    for path in paths:
        name = name_of(path)
        assert name is not None
        a, b = before.get(path), after.get(path)
        if a is None and b is not None:
            found.append(ParamChange(name, "added", None, b))
        elif a is not None and b is None:
            found.append(ParamChange(name, "removed", a, None))
        elif a is not None and b is not None and a != b:
            found.append(ParamChange(name, "changed", a, b))
    return found


def restore_at(store: MemoryStore, txn: Transaction, target: str) -> list[str]:
    """Rollback: put every file under ``params/`` back as commit ``target`` has it, inside ``txn``
    (the caller holds the lock). Returns the names of the records changed."""
    repo = store.repo
    head = repo.head() or "HEAD"
    changed = repo.changed(head, target, PARAMS_DIR)
    if not changed:
        return []
    paths = [p for _, p in changed]
    _refuse_hand_edited(store, paths)
    store._note_paths(txn, paths)
    data = dict(repo.cat(f"{target}:{p}" for p in paths))
    for path in paths:
        content = data.get(f"{target}:{path}")
        if content is None:
            (store.root / path).unlink(missing_ok=True)
        else:
            _write_file(store, path, content)
    return sorted(n for p in paths if (n := name_of(p)))


__all__ = [
    "FORMAT", "FORMAT_VERSION", "KINDS", "STATUSES", "ParamRecord", "ParamChange", "blob_path", "check_param_name",
    "decode_blob", "encode_blob", "get", "metadata_for", "read_blob", "record_path", "records", "remove", "save",
    "set_enabled", "set_scale", "status", "statuses", "verify_blob",
]
