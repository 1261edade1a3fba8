"""Activation memory files: a saved KV state as a safetensors file.

A file holds two tensors, ``state`` (llama.cpp's per-sequence state, uint8)
and ``tokens`` (the token ids it was evaluated from, int32), and string
metadata: the format, the model's identity (GGUF sha256, name,
architecture, context size), the units the head was built from (id and
version), and when and how it was built. Values are JSON.

Files are named by the sha256 of their bytes (content addressing, as in
git-lfs and DVC): reading one checks the hash, so a truncated or altered file
is refused, never loaded into a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.errors import MemosError

FORMAT = "memos-kv/1"
SUFFIX = ".safetensors"


class CacheError(MemosError):
    """A cache file that is missing, damaged, or for another model."""

    exit_code = 6


@dataclass
class KVFile:
    """A cache file's content."""

    state: np.ndarray
    tokens: list[int]
    meta: dict[str, Any]
    sha256: str
    size: int
    read_seconds: float = 0.0


def file_name(sha256: str) -> str:
    return sha256 + SUFFIX


def write(directory: Path, state: np.ndarray, tokens: list[int], meta: dict[str, Any]) -> tuple[str, int, float]:
    """Write a cache file into ``directory``; returns (sha256, bytes, seconds).

    The file is written to a temporary name and renamed into place, so a crash
    never leaves a partial file under a content-hash name; the same content
    written twice is one file.
    """
    from safetensors.numpy import save

    started = time.perf_counter()
    header = {"format": FORMAT, **meta, "n_tokens": len(tokens)}
    data = save(
        {"state": np.ascontiguousarray(state, dtype=np.uint8), "tokens": np.asarray(tokens, dtype=np.int32)},
        metadata={key: json.dumps(value, ensure_ascii=False) for key, value in header.items()},
    )
    sha = hashlib.sha256(data).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file_name(sha)
    if not target.is_file() or target.stat().st_size != len(data):
        fd, tmp = tempfile.mkstemp(prefix=".kv-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return sha, len(data), time.perf_counter() - started


def read(directory: Path, sha256: str) -> KVFile:
    """Read and verify the cache file named by ``sha256``; ``CacheError`` says why not."""
    from safetensors.numpy import load

    started = time.perf_counter()
    path = directory / file_name(sha256)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"cache file {path.name} is missing") from None
    except OSError as exc:
        raise CacheError(f"cannot read cache file {path.name}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CacheError(f"cache file {path.name} is damaged (its sha256 does not match: truncated or changed)")
    try:
        tensors = load(data)
        meta = {key: json.loads(value) for key, value in _metadata(data).items()}
    except Exception as exc:  # safetensors raises its own error types
        raise CacheError(f"cache file {path.name} is not a memos KV cache ({exc})") from None
    if meta.get("format") != FORMAT or "state" not in tensors or "tokens" not in tensors:
        raise CacheError(f"cache file {path.name} is not a {FORMAT} file")
    return KVFile(
        state=tensors["state"],
        tokens=[int(t) for t in tensors["tokens"]],
        meta=meta,
        sha256=sha256,
        size=len(data),
        read_seconds=time.perf_counter() - started,
    )


def verify(path: Path) -> str | None:
    """Why the file at ``path`` (named by its hash) cannot be used, or None."""
    try:
        read(path.parent, path.name.removesuffix(SUFFIX))
    except CacheError as exc:
        return str(exc)
    return None


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header
    length, then a JSON header (the format's specification)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return meta
