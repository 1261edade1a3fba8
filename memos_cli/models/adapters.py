"""Parametric memory applied by llama.cpp: LoRA adapters and control (steering) vectors.

- A LoRA adapter is handed to llama.cpp as a GGUF file (``general.type =
  adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, tensors
  ``blk.N.<name>.weight.lora_a`` (r, n_in) and ``.lora_b`` (n_out, r)),
  written from the blob's arrays to a private temporary file, loaded with
  ``llama_adapter_lora_init`` and the file removed: llama.cpp copies the
  tensors into its own buffers. Which adapters a context uses, and at what
  scale, is set per request with ``llama_set_adapters_lora`` (microseconds,
  no reload); the effective scale is ``scale * alpha / rank``, and an adapter
  at scale 0 is left out of the graph.
- A control vector is ``n_embd`` floats per layer from layer 1, added to the
  residual stream after each layer (``llama_set_adapter_cvec``); one per
  context, so several are summed before they are set. ``None`` clears it.

llama.cpp checks only tensor names and shapes, so which model an adapter was
made for is checked by memos (``parametric``), not here.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from memos_cli.errors import ModelError


def write_lora_gguf(path: str, arch: str, alpha: float, tensors: dict[str, np.ndarray]) -> None:
    """A LoRA GGUF as llama.cpp's ``llama_adapter_lora_init`` reads it."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    try:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(alpha))
        for name in sorted(tensors):
            writer.add_tensor(name, np.ascontiguousarray(tensors[name], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


class LoraAdapter:
    """One LoRA adapter loaded into llama.cpp for a model; freed with ``close``."""

    def __init__(self, llama_cpp: Any, model: Any, arch: str, alpha: float, tensors: dict[str, np.ndarray],
                 name: str = "adapter") -> None:
        self._lib = llama_cpp
        self.name = name
        fd, path = tempfile.mkstemp(prefix="memos-lora-", suffix=".gguf")
        os.close(fd)
        try:
            write_lora_gguf(path, arch, alpha, tensors)
            self.ptr = llama_cpp.llama_adapter_lora_init(model, path.encode())
        finally:
            os.unlink(path)
        if not self.ptr:
            raise ModelError(f"llama.cpp refused parametric memory {name}: its tensors do not fit this model "
                             "(wrong names or shapes)")

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.llama_adapter_lora_free(self.ptr)
            self.ptr = None


def set_loras(llama_cpp: Any, ctx: Any, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
    """Make exactly these adapters, at these scales, active in ``ctx`` (an empty list: none)."""
    live = [(a, s) for a, s in adapters if a.ptr and s != 0.0]
    n = len(live)
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*[a.ptr for a, _ in live])
    scales = (ctypes.c_float * max(n, 1))(*[float(s) for _, s in live])
    if llama_cpp.llama_set_adapters_lora(ctx, arr if n else None, n, scales if n else None) != 0:
        raise ModelError("llama.cpp could not apply the LoRA adapters")


def set_control(llama_cpp: Any, ctx: Any, vector: np.ndarray | None, n_embd: int) -> None:
    """Set the control vector (``(n_layer - 1, n_embd)``, row i for layer i + 1), or clear it (None)."""
    if vector is None:
        rc = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, 0, 0)
    else:
        data = np.ascontiguousarray(vector, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != n_embd:
            raise ModelError(f"a steering vector of shape {data.shape} does not fit a model of width {n_embd}")
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_set_adapter_cvec(ctx, ptr, data.size, n_embd, 1, data.shape[0])
    if rc != 0:
        raise ModelError("llama.cpp could not apply the steering vector (it does not fit this model)")
