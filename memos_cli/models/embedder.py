"""Sentence embeddings from a GGUF model through llama.cpp (llama-cpp-python).

``llama_cpp`` is imported when an ``Embedder`` is built, not when this module
is imported, so commands that never embed do not pay for it.

Speed: sequences are packed several at a time into one ``llama_decode`` call
(each with its own sequence id, so attention stays within a sequence). On CPU
the attention over a packed batch costs O(tokens^2), so batches are kept to
about ``_TOKEN_BUDGET`` tokens, and flash attention is on: together that is
roughly 3x the throughput of ``Llama.embed`` with its 512-token batches.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.errors import ModelError
from memos_cli.models import registry
from memos_cli.models.runtime import default_threads, import_llama_cpp, silence_llama_logs

# Tokens packed into one decode call. Measured on 2 cores with ~26-token
# sentences and flash attention: 128-256 is the sweet spot, 2048 is 3x slower.
_TOKEN_BUDGET = 192
# Flash attention: ~1.5x the throughput at this budget. Its f16 K/V make
# results depend on batch composition by up to ~2e-4 per component (vs ~3e-5
# with f32 attention), far below anything that matters for retrieval.
_FLASH_ATTN = True
# Longest accepted text before tokenising, in characters per allowed token:
# anything beyond is cut unseen (a WordPiece token rarely spans more than a
# long word), which keeps a megabyte-sized input from being tokenised whole.
_CHARS_PER_TOKEN_LIMIT = 128

def _context_size(n_ctx: int) -> int:
    # llama.cpp (0.3.36) aborts the process in graph reservation for some
    # batch sizes between 256 and 512 (e.g. 300, 384); powers of two are safe.
    if n_ctx < 8:
        raise ValueError(f"n_ctx must be at least 8, got {n_ctx}")
    return 1 << (n_ctx - 1).bit_length()


class Embedder:
    """One loaded embedding model; ``embed`` returns L2-normalised float32 rows.

    Not meant to be shared by several threads at once; calls are serialised
    with a lock so that doing so is still safe.
    """

    model_id: str
    dim: int

    def __init__(self, model_path: Path | str, n_threads: int | None = None, n_ctx: int = 512) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelError(f"embedding model not found: {path}")
        if not registry.is_gguf(path):
            raise ModelError(f"not a GGUF model file: {path}")

        silence_llama_logs()
        llama_cpp = import_llama_cpp()

        self._llama_cpp = llama_cpp
        self._lock = threading.Lock()
        threads = n_threads or default_threads()
        size = _context_size(n_ctx)

        # The model's own pooling (MEAN for all-MiniLM-L6-v2) if it declares
        # one; models without pooling metadata (plain decoders) get MEAN.
        self._threads = self._threads_now = threads
        llm = self._load(path, threads, size, llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)
        if llm.pooling_type() not in (
            llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            llama_cpp.LLAMA_POOLING_TYPE_CLS,
            llama_cpp.LLAMA_POOLING_TYPE_LAST,
        ):
            llm.close()
            llm = self._load(path, threads, size, llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self._llm = llm

        self.dim = int(llm.n_embd())
        # Longest sequence fed to the model, special tokens included; longer
        # texts are truncated to it (positions past n_ctx_train do not exist).
        self._max_tokens = min(n_ctx, size, int(llama_cpp.llama_model_n_ctx_train(llm.model)))
        # Tokens the tokenizer appends after the text ([SEP] for BERT); kept
        # at the end when a long text is truncated.
        empty = llm.tokenize(b"", add_bos=True, special=False)
        self._tail = list(empty[1:] if empty and empty[0] == llm.token_bos() else empty)
        if self._max_tokens <= len(empty):
            raise ModelError(f"context of {path} is too small to embed anything")

        # Non-causal models need a whole batch in one ubatch (n_ubatch == size).
        self._budget = min(_TOKEN_BUDGET, size)
        self._n_seq_max = int(llm.context_params.n_seq_max)
        self._batch = llama_cpp.llama_batch_init(size, 0, self._n_seq_max)
        name = llm.metadata.get("general.name") or path.stem
        self.model_id = f"{name}@{registry.file_digest(path)[:12]}"

    def _load(self, path: Path, threads: int, size: int, pooling: int) -> Any:
        try:
            return self._llama_cpp.Llama(
                model_path=str(path),
                embedding=True,
                pooling_type=pooling,
                n_ctx=size,
                n_batch=size,
                n_ubatch=size,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=_FLASH_ATTN,
                verbose=False,
            )
        except Exception:  # llama-cpp-python raises ValueError/RuntimeError with no detail
            raise ModelError(f"cannot load embedding model {path}: damaged file or a model llama.cpp does not support") from None

    @classmethod
    def load_default(cls, n_threads: int | None = None) -> Embedder:
        """The default model (all-MiniLM-L6-v2), converted on first use."""
        return cls(registry.default_embedding_model_path(), n_threads=n_threads)

    # ------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        text = text[: self._max_tokens * _CHARS_PER_TOKEN_LIMIT]
        tokens = self._llm.tokenize(text.encode("utf-8", errors="replace"), add_bos=True, special=False)
        if len(tokens) > self._max_tokens:
            keep = self._max_tokens - len(self._tail)
            tokens = tokens[:keep] + self._tail
        return tokens

    def embed(self, texts: Sequence[str], threads: int | None = None) -> np.ndarray:
        """Embeddings of ``texts``, shape (len(texts), dim), rows of unit length.

        ``threads`` overrides the number of CPU threads for this call.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; use embed_one() for one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            wanted = threads or self._threads
            if wanted != self._threads_now:
                self._llama_cpp.llama_set_n_threads(self._llm.ctx, wanted, wanted)
                self._threads_now = wanted
            token_lists = [self._tokenize(t) for t in texts]
            start = 0
            while start < len(token_lists):
                # Greedy packing: at least one sequence, then as many as fit.
                end, n_tokens = start + 1, len(token_lists[start])
                while (
                    end < len(token_lists) and end - start < self._n_seq_max and n_tokens + len(token_lists[end]) <= self._budget
                ):
                    n_tokens += len(token_lists[end])
                    end += 1
                self._decode(token_lists[start:end], out[start:end])
                start = end
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Embedding of one text, shape (dim,)."""
        return self.embed([text])[0]

    def embed_query(self, text: str) -> np.ndarray:
        """Embedding of a search query, on one thread.

        Recall runs its full-text search on the other core meanwhile; two
        llama.cpp threads would contend with it. Measured at 100k units on
        2 cores: recall p50 16 ms and p95 20 ms, against 20 and 38 ms.
        """
        return self.embed([text], threads=1)[0]

    def _decode(self, seqs: list[list[int]], dest: np.ndarray) -> None:
        lc = self._llama_cpp
        ctx = self._llm.ctx
        batch = self._batch
        j = 0
        for seq_id, tokens in enumerate(seqs):
            for pos, tok in enumerate(tokens):
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq_id
                batch.logits[j] = 1
                j += 1
        batch.n_tokens = j
        memory = lc.llama_get_memory(ctx)
        if memory:  # decoder models keep a KV cache; encoders (BERT) have none
            lc.llama_memory_clear(memory, True)
        rc = lc.llama_decode(ctx, batch)
        if rc != 0:
            raise ModelError(f"embedding failed: llama_decode returned {rc}")
        for seq_id in range(len(seqs)):
            ptr = lc.llama_get_embeddings_seq(ctx, seq_id)
            if not ptr:
                raise ModelError("embedding failed: the model returned no pooled embedding")
            dest[seq_id] = np.ctypeslib.as_array(ptr, shape=(self.dim,))

    # ------------------------------------------------------------------

    def close(self) -> None:
        """Free the model now instead of at garbage collection."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before anything was loaded
            return
        with lock:
            if getattr(self, "_batch", None) is not None:
                self._llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            if getattr(self, "_llm", None) is not None:
                self._llm.close()
                self._llm = None

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def default_embedder(n_threads: int | None = None) -> Embedder:
    """``Embedder.load_default()``."""
    return Embedder.load_default(n_threads=n_threads)
