"""Reading a GGUF model's shape and some of its weights, dequantised, with the ``gguf`` package.

Learning an adapter needs the float32 values of the few tensors it trains
through (the last layer, the output norm) and of the output matrix's rows
for the tokens it scores; the rest of the model stays with llama.cpp.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.errors import ModelError


@dataclass(frozen=True)
class ModelShape:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_vocab: int
    eps: float


class Weights:
    """One GGUF file, memory-mapped; tensors dequantised on request (with ``gguf.quants``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        index = self._index()
        self._tensors: dict[str, dict[str, Any]] = index["tensors"]
        self._fields: dict[str, Any] = index["fields"]
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        arch = self.field("general.architecture")
        if not isinstance(arch, str):
            raise ModelError(f"{path} has no general.architecture: not a usable GGUF model")
        out = "output.weight" if "output.weight" in self._tensors else "token_embd.weight"
        if out not in self._tensors:
            raise ModelError(f"{path} has no output matrix (output.weight or token_embd.weight)")
        self._output = out
        self.shape = ModelShape(
            arch=arch,
            n_layer=int(self.field(f"{arch}.block_count") or 0),
            n_embd=int(self.field(f"{arch}.embedding_length") or 0),
            n_ff=int(self.field(f"{arch}.feed_forward_length") or 0),
            n_vocab=int(self._tensors[out]["shape"][0]),
            eps=float(self.field(f"{arch}.attention.layer_norm_rms_epsilon") or 1e-6),
        )

    def _index(self) -> dict[str, Any]:
        try:
            return read_index(self.path)
        except (OSError, ValueError, struct.error) as exc:
            raise ModelError(f"cannot read GGUF model {self.path}: {exc}") from None

    def field(self, key: str) -> Any:
        return self._fields.get(key)

    def _raw(self, name: str) -> tuple[np.ndarray, Any, list[int]]:
        """The tensor's bytes as (rows, bytes per row), its type, and its shape (rows first)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        info = self._tensors.get(name)
        if info is None:
            raise ModelError(f"the model has no tensor {name}")
        kind = GGMLQuantizationType(info["type"])
        block, size = GGML_QUANT_SIZES[kind]
        shape = info["shape"]
        row_bytes = shape[-1] // block * size
        raw = self._map[info["offset"]: info["offset"] + info["bytes"]]
        return raw.reshape(-1, row_bytes), kind, shape

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32, in numpy's (rows, columns) order: a weight is (n_out, n_in)."""
        from gguf.quants import dequantize

        raw, kind, shape = self._raw(name)
        values = dequantize(raw, kind) if kind.name not in ("F32", "F16") else raw.view(
            np.float32 if kind.name == "F32" else np.float16)
        return np.asarray(values, dtype=np.float32).reshape(shape)

    def output_rows(self, tokens: np.ndarray) -> np.ndarray:
        """The output matrix's rows for these token ids, (len(tokens), n_embd) float32: a row is
        stored (and quantised) on its own, so only those rows are dequantised."""
        from gguf.quants import dequantize

        raw, kind, _shape = self._raw(self._output)
        rows = np.ascontiguousarray(raw[np.asarray(tokens, dtype=np.int64)])
        if kind.name in ("F32", "F16"):
            values = rows.view(np.float32 if kind.name == "F32" else np.float16)
        else:
            values = dequantize(rows, kind)
        return np.asarray(values, dtype=np.float32).reshape(len(tokens), self.shape.n_embd)


# GGUF value types (gguf.GGUFValueType): the size of each fixed-size one, by its number.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_index(path: Path) -> dict[str, Any]:
    """The scalar metadata fields and each tensor's type, shape and offset, from a GGUF header.

    ``gguf.GGUFReader`` builds an object for every element of every array field, the
    262,144-string vocabulary included: 14-16 s here for what takes 0.3 s when the arrays are
    stepped over. The layout is GGUF's (versions 2 and 3): magic, version, tensor count, field
    count; each field's key, type and value; each tensor's name, dimensions, type and offset
    from the data, which starts at the next multiple of ``general.alignment`` (32).
    """
    with open(path, "rb") as fh:
        data = fh.read(64 << 20)  # the header; a vocabulary of 262k tokens takes about 6 MB
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        text = data[pos: pos + n].decode("utf-8", "replace")
        pos += n
        return text

    def value(kind: int) -> Any:
        nonlocal pos
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item, count = take("<I"), take("<Q")
            if item in _SCALARS:
                pos += struct.calcsize(_SCALARS[item]) * count
            else:
                for _ in range(count):
                    value(item)
            return None  # arrays are not needed here
        raise ValueError(f"unknown GGUF value type {kind}")

    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_fields = take("<Q"), take("<Q")
    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key = string()
        found = value(take("<I"))
        if found is not None:
            fields[key] = found
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        infos.append((name, take("<I"), dims, take("<Q")))
    align = int(fields.get("general.alignment", 32))
    start = -(-pos // align) * align
    tensors: dict[str, dict[str, Any]] = {}
    for name, kind, dims, offset in infos:
        shape = list(reversed(dims))  # rows first, as numpy reads them
        tensors[name] = {"type": kind, "shape": shape, "offset": start + offset, "bytes": _nbytes(kind, dims)}
    return {"fields": fields, "tensors": tensors}


def _nbytes(kind: int, dims: list[int]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    count = 1
    for d in dims:
        count *= d
    return count // block * size
