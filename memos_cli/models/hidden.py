"""Reading a model's hidden states while llama.cpp evaluates a prompt.

llama.cpp names the tensors of its compute graph (``l_out-17`` is the
residual stream after layer 17, ``kqv_out-17`` the attention heads before
their output projection) and calls ``cb_eval`` for each one it is about to
compute ("ask") and once it is computed. The Python bindings expose the
callback but not ggml's tensor functions, so ``ggml_get_name``,
``ggml_nbytes`` and ``ggml_backend_tensor_get`` are bound here from the
package's ``libggml-base``. This leans on ggml internals (the tensors' names
and their row-major float32 layout): ``Capture`` checks what it reads and
fails with a clear error when a future llama.cpp names or lays them out
otherwise.

A capture runs in a second llama.cpp context on the same weights (the
high-level ``Llama`` object takes no callback), so the chat context and its
KV state are untouched.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.errors import ModelError

_ggml: Any = None


def _libggml() -> Any:
    """``libggml-base`` from the llama_cpp package, with the three functions typed."""
    global _ggml
    if _ggml is None:
        import llama_cpp

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
        if not candidates:
            raise ModelError(f"cannot find libggml-base in {lib_dir}: hidden states cannot be read")
        lib = ctypes.CDLL(str(candidates[0]))
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nelements.argtypes = [ctypes.c_void_p]
        lib.ggml_nelements.restype = ctypes.c_int64
        lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
        lib.ggml_is_contiguous.restype = ctypes.c_bool
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        lib.ggml_backend_tensor_get.restype = None
        _ggml = lib
    return _ggml


class Capture:
    """A context on ``model`` (a llama.cpp model pointer) that records the named tensors
    of each evaluation, as float32 arrays of shape (rows, width): ``names`` maps each name to
    its width; only tensors with a row per evaluated token can be read (not those after the
    last layer's selection of the rows whose logits are asked for)."""

    def __init__(self, llama_cpp: Any, model: Any, names: dict[str, int], *, n_ctx: int = 2048,
                 n_threads: int = 1) -> None:
        self._lib = llama_cpp
        self.names = set(names)
        self.widths = dict(names)
        self.found: dict[str, np.ndarray] = {}
        self._error: str | None = None
        ggml = _libggml()
        wanted = {n.encode() for n in self.names}

        def callback(tensor: int, ask: bool, _user: int) -> bool:
            try:
                name = ggml.ggml_get_name(tensor)
                if name not in wanted:
                    return False
                if ask:
                    return True
                nbytes = ggml.ggml_nbytes(tensor)
                count = ggml.ggml_nelements(tensor)
                if not ggml.ggml_is_contiguous(tensor) or nbytes != 4 * count:
                    self._error = f"tensor {name.decode()} is not a contiguous float32 tensor"
                    return True
                buf = np.empty(count, dtype=np.float32)
                ggml.ggml_backend_tensor_get(tensor, buf.ctypes.data, 0, nbytes)
                self.found[name.decode()] = buf
            except Exception as exc:  # an exception must not cross the C boundary
                self._error = f"reading hidden states failed: {exc}"
            return True

        self._callback = llama_cpp.ggml_backend_sched_eval_callback(callback)  # kept referenced
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx  # one graph per batch: each captured tensor comes in one piece
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.cb_eval = self._callback
        params.cb_eval_user_data = None
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise ModelError("llama.cpp could not create a context to read hidden states")
        self.n_ctx = n_ctx
        self._vocab = llama_cpp.llama_n_vocab(llama_cpp.llama_model_get_vocab(model))
        self._prefix: list[int] = []
        self._prefix_state: np.ndarray | None = None

    def set_prefix(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` once and keep their KV state: a later ``run`` on tokens that start
        with them evaluates only the rest (its hidden states then have rows for the rest only:
        see ``start_of``)."""
        self._prefix, self._prefix_state = [], None
        if tokens:
            self.run(list(tokens), [])
            lib = self._lib
            size = int(lib.llama_state_seq_get_size(self.ctx, 0))
            buf = np.empty(size, dtype=np.uint8)
            written = int(lib.llama_state_seq_get_data(self.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                       size, 0))
            if written == 0:
                raise ModelError("llama.cpp could not save a KV state")
            self._prefix_state = buf[:written]
        self._prefix = list(tokens)

    def start_of(self, tokens: list[int]) -> int:
        """Where ``run`` starts reading ``tokens``' rows: after the prefix when they start with it."""
        n = len(self._prefix)
        return n if n and len(tokens) > n and tokens[:n] == self._prefix else 0

    def run(self, tokens: list[int], logits_at: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate ``tokens`` from an empty context (from the prefix's saved state when they start
        with it) in one batch. Returns the captured tensors (name -> (rows, width), a row per token
        from ``start_of(tokens)``) and the logits at the positions ``logits_at`` (at or after it)."""
        lib = self._lib
        n = len(tokens)
        if n > self.n_ctx:
            raise ModelError(f"a training example of {n} tokens is longer than {self.n_ctx}")
        start = self.start_of(tokens)
        if any(i < start for i in logits_at):
            raise ModelError("a logit was asked for inside the shared prefix")
        memory = lib.llama_get_memory(self.ctx)
        if memory is not None:
            lib.llama_memory_clear(memory, True)
        if start:
            state = self._prefix_state
            assert state is not None
            read = int(lib.llama_state_seq_set_data(self.ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                    state.size, 0))
            if read != state.size:
                raise ModelError("llama.cpp refused a saved KV state")
        rows = n - start
        batch = lib.llama_batch_init(rows, 0, 1)
        try:
            want = set(logits_at)
            for j, i in enumerate(range(start, n)):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tokens[i], i, 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = i in want
            batch.n_tokens = rows
            self.found = {}
            self._error = None
            if lib.llama_decode(self.ctx, batch) != 0:
                raise ModelError("llama.cpp failed to evaluate a training example")
            if self._error:
                raise ModelError(self._error)
            missing = self.names - set(self.found)
            if missing:
                raise ModelError(f"this llama.cpp build does not name the tensors memos reads ({', '.join(sorted(missing))})")
            states: dict[str, np.ndarray] = {}
            for name, flat in self.found.items():
                width = self.widths[name]
                if flat.size != rows * width:
                    raise ModelError(f"tensor {name} has {flat.size} values, not {rows} rows of {width}")
                states[name] = flat.reshape(rows, width)
            picked = [np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i - start), shape=(self._vocab,)).copy()
                      for i in logits_at]
            logits = np.stack(picked) if picked else np.empty((0, self._vocab), dtype=np.float32)
            return states, logits
        finally:
            lib.llama_batch_free(batch)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._lib.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
