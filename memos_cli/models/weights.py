"""Reading a GGUF model's shape and some of its weights, dequantised, with the ``gguf`` package.

Learning an adapter needs the float32 values of the few tensors it trains
through (the last layer, the output norm) and of the output matrix's rows
for the tokens it scores; the rest of the model stays with llama.cpp.
"""

from __future__ import annotations

import json
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
    """One GGUF file, memory-mapped; tensors dequantised on request.

    ``gguf.GGUFReader`` parses every metadata field, the 262,144-string
    vocabulary included (about 16 s here), so what is needed (the shape
    fields and each tensor's type, shape and offset) is remembered in the
    cache directory under the file's sha256 and later reads map the file
    directly.
    """

    def __init__(self, path: Path | str, sha256: str | None = None) -> None:
        self.path = Path(path)
        index = self._index(sha256)
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

    def _index(self, sha256: str | None) -> dict[str, Any]:
        from memos_cli.models.registry import cache_dir

        cached = cache_dir() / "params" / f"gguf-index-{sha256}.json" if sha256 else None
        if cached is not None:
            try:
                return json.loads(cached.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(self.path), "r")
        except Exception as exc:  # gguf raises ValueError, struct.error, ... on a file it cannot parse
            raise ModelError(f"cannot read GGUF model {self.path}: {exc}") from None
        fields: dict[str, Any] = {}
        for key, found in reader.fields.items():
            if key.startswith("general.") or key.count(".") >= 1 and not key.startswith("tokenizer."):
                try:
                    value = found.contents()
                except Exception:
                    continue
                if isinstance(value, (str, int, float, bool)):
                    fields[key] = value
        tensors = {t.name: {"type": int(t.tensor_type), "shape": [int(d) for d in reversed(t.shape.tolist())],
                            "offset": int(t.data_offset), "bytes": int(t.n_bytes)} for t in reader.tensors}
        index = {"fields": fields, "tensors": tensors}
        if cached is not None:
            from memos_cli.plaintext.files import write_private

            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_private(cached, json.dumps(index).encode())
            except OSError:
                pass  # only a cache
        return index

    def field(self, key: str) -> Any:
        return self._fields.get(key)

    def has(self, name: str) -> bool:
        return name in self._tensors

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

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        info = self._tensors.get(name)
        if info is None:
            raise ModelError(f"the model has no tensor {name}")
        return tuple(info["shape"])

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
