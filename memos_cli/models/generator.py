"""A chat model through llama.cpp: its identity, its prompt format, prefill,
saving and restoring its KV state, and streaming text.

``llama_cpp`` is imported when a ``Generator`` is built, so commands that
never chat do not pay for it.

Activation memory rests on two properties kept here:

- a prompt is always two token lists, the *head* (instructions and the block
  of memory that a KV cache holds) and the *tail* (the conversation, then
  this turn's recalled memories and question), tokenized separately and
  concatenated, so the head's tokens are the same whether they come from a
  saved cache or are prefilled now (a chat session splits the tail further,
  an exchange of the conversation a piece: ``chat.session``);
- the head is always evaluated on its own, in the same batches, before the
  tail: the KV values restored from a cache are then bit for bit those a
  prefill would compute, and greedy decoding gives the same answer both ways.

The state saved is llama.cpp's per-sequence state (the KV cells of sequence
0, no logits): about 7 KB per token for Gemma 3 270M, whose sliding-window
layers keep only their window.
"""

from __future__ import annotations

import codecs
import ctypes
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.errors import ModelError, UsageError
from memos_cli.models import registry
from memos_cli.models.runtime import default_threads, import_llama_cpp, silence_llama_logs


@contextmanager
def _sigint_between_tokens() -> Iterator[Callable[[], bool]]:
    """Ctrl-C during generation, noted by a handler and raised between two tokens.

    Python raises KeyboardInterrupt wherever its bytecode runs when the
    signal lands, and that can be inside llama-cpp-python's ctypes log
    callback, where ctypes prints the exception and drops it: the answer then
    runs on to max_tokens. Only in the main thread, and only where Ctrl-C
    would raise KeyboardInterrupt anyway.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    hit: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: hit.append(1))
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)
        if hit:  # a Ctrl-C after the last token, as the answer ended
            raise KeyboardInterrupt

DEFAULT_CTX = 8192
N_BATCH = 512  # prefill batch; part of how the head is evaluated, so the same for build and chat
DEFAULT_MAX_TOKENS = 256
_SENTINEL = "\u2063MEMOS-SPLIT\u2063"  # marks where the head ends in a rendered template
_TURN = "\u2063MEMOS-TURN\u2063"  # and where this turn begins, after the conversation so far


@dataclass(frozen=True)
class ModelIdentity:
    """What a KV cache must match to be loaded: the same file and context size."""

    sha256: str
    name: str
    arch: str
    n_ctx: int
    path: str
    # The steering vectors applied (a digest of them and their strengths; "" for none): they change
    # every layer's hidden states, so the KV state too. LoRA adapters, which memos learns on the
    # last block only, change nothing the KV state holds, and are not part of it.
    steering: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PromptFormat:
    """How a conversation becomes text.

    With a chat template in the GGUF's metadata (``tokenizer.chat_template``),
    it is rendered with jinja2 (as llama-cpp-python does): the system message
    carries the head, and the last user message this turn's memories and the
    question; markers split the text after the head and before this turn.
    Without one (the default Gemma 3 270M is a base model and has none), a
    plain ``User:``/``Assistant:`` transcript, this turn's memories before its
    question.
    """

    def __init__(self, template: str | None, bos_text: str, eos_text: str) -> None:
        self.template = template
        self._bos, self._eos = bos_text, eos_text
        self._formatter: Any = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)
        # A base model goes on writing the transcript: the next "User:" turn, or memory lines.
        self.stop = ["\nUser:", "\n\nUser ", "\n- ["] if not template else []

    @property
    def name(self) -> str:
        return "template" if self.template else "plain"

    def starts_with_bos(self, head: str) -> bool:
        """Whether a rendered head already starts with the BOS token's text (templates that write it)."""
        return bool(self.template) and bool(self._bos) and head.startswith(self._bos)

    def render(self, head: str, memories: str, history: list[tuple[str, str]], question: str) -> tuple[str, str]:
        """(head text, tail text); the head text depends on ``head`` only."""
        head_text, conversation, turn = self.render_parts(head, memories, history, question)
        return head_text, conversation + turn

    def render_parts(self, head: str, memories: str, history: list[tuple[str, str]],
                     question: str) -> tuple[str, str, str]:
        """(head, conversation, turn): the head text depends on ``head`` only, the conversation's on
        ``head`` and ``history`` only, and this turn's memories and question are all in the turn's
        text, after the conversation, so the conversation's KV state can be kept from one turn to
        the next. The three, joined, are the prompt."""
        block = f"{memories}\n\n" if memories else ""
        if self._formatter is None:
            turns = "".join(f"User: {q}\nAssistant: {a}\n\n" for q, a in history)
            return head, "\n" + turns, f"{block}User: {question}\nAssistant:"
        messages: list[dict[str, str]] = []
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": _TURN + block + question})
        system = head + _SENTINEL
        for attempt in ("system", "user"):
            if attempt == "system":
                msgs = [{"role": "system", "content": system}, *messages]
            else:  # templates without a system role: it goes first in the first user message
                msgs = [dict(m) for m in messages]
                msgs[0]["content"] = system + "\n\n" + msgs[0]["content"]
            try:
                text = self._formatter(messages=msgs).prompt
            except Exception:  # jinja2 raises whatever the template raises ("System role not supported")
                continue
            before, sep, after = text.partition(_SENTINEL)
            conversation, turn_sep, turn = after.partition(_TURN)
            if sep and turn_sep:
                return before, conversation, turn
        raise ModelError("the model's chat template cannot be used (it rejects a system message and a first user message)")


class Generator:
    """One chat model loaded with llama.cpp."""

    def __init__(self, model_path: Path | str, *, n_ctx: int = DEFAULT_CTX, n_threads: int | None = None) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelError(f"chat model not found: {path}")
        if not registry.is_gguf(path):
            raise ModelError(f"not a GGUF model file: {path}")
        if not isinstance(n_ctx, int) or n_ctx < 256:
            raise UsageError(f"bad context size {n_ctx!r}: use at least 256 tokens")
        silence_llama_logs()
        self._lib = import_llama_cpp()
        threads = n_threads or default_threads()
        try:
            self._llm = self._lib.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=N_BATCH,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except Exception:  # llama-cpp-python raises ValueError with no detail
            raise ModelError(f"cannot load chat model {path}: damaged file or a model llama.cpp does not support") from None
        llm = self._llm
        meta = llm.metadata
        train_ctx = int(self._lib.llama_model_n_ctx_train(llm.model))
        if n_ctx > train_ctx:
            self.close()
            raise UsageError(f"context size {n_ctx} is more than {path.name} was trained for ({train_ctx} tokens)")
        self.identity = ModelIdentity(
            sha256=registry.file_digest(path),
            name=str(meta.get("general.name") or path.stem),
            arch=str(meta.get("general.architecture") or "unknown"),
            n_ctx=int(llm.n_ctx()),
            path=str(path),
        )
        vocab = llm._model.vocab
        self._vocab = vocab
        bos = llm.token_bos()
        eos = llm.token_eos()
        bos_text = llm._model.token_get_text(bos) if bos >= 0 else ""
        eos_text = llm._model.token_get_text(eos) if eos >= 0 else ""
        self.format = PromptFormat(meta.get("tokenizer.chat_template"), bos_text, eos_text)
        self.n_layer = int(self._lib.llama_model_n_layer(llm.model))
        self.n_embd = int(self._lib.llama_model_n_embd(llm.model))
        self._adapters: list[Any] = []  # LoraAdapter, freed with the model

    # ---- tokens ------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.identity.n_ctx

    def tokenize(self, text: str, *, head: bool = False) -> list[int]:
        """Tokens of ``text``; a head starts with BOS unless its template wrote it."""
        bos = head and not self.format.starts_with_bos(text)
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True))

    def count(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def eos_token(self) -> int:
        return int(self._llm.token_eos())

    def greedy_many(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Each prompt's greedy continuation (plain argmax), decoded side by side in a second context."""
        from memos_cli.models.batch import greedy_many

        return greedy_many(self._lib, self._llm.model, prompts, max_tokens, n_threads=default_threads())

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    # ---- the head's KV state -------------------------------------------------

    def _ctx(self) -> Any:
        return self._llm._ctx.ctx

    def _clear(self) -> None:
        self._llm.reset()
        memory = self._lib.llama_get_memory(self._ctx())
        if memory is not None:
            self._lib.llama_memory_clear(memory, True)

    def _check_prompt(self, n_tokens: int) -> None:
        if n_tokens >= self.n_ctx:
            raise UsageError(f"the prompt is {n_tokens} tokens, more than the context of {self.n_ctx} (use --ctx)")

    def prefill(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` from an empty context (in ``N_BATCH`` batches)."""
        self._check_prompt(len(tokens))
        self._clear()
        self._llm.eval(tokens)

    def prefill_from(self, state: np.ndarray, state_tokens: list[int], tokens: list[int]) -> int:
        """Evaluate ``tokens``, starting from a state saved after ``state_tokens``: the part of it the
        two share at their start is kept, the rest evaluated. Returns how many tokens were kept (0: it
        was prefilled from empty, as llama.cpp cannot drop the tail of some caches, a sliding window's)."""
        self._check_prompt(len(tokens))
        common = 0
        for old, new in zip(state_tokens, tokens, strict=False):
            if old != new:
                break
            common += 1
        if common == 0:
            self.prefill(tokens)
            return 0
        self.load_state(state, state_tokens)
        if not self._llm._ctx.kv_cache_seq_rm(-1, common, -1):
            self.prefill(tokens)
            return 0
        self._llm.n_tokens = common
        if common < len(tokens):
            self._llm.eval(tokens[common:])
        return common

    def holds(self, tokens: list[int]) -> bool:
        """Whether the context holds exactly ``tokens``, evaluated."""
        n = self._llm.n_tokens
        return n == len(tokens) and bool(np.array_equal(self._llm.input_ids[:n], tokens))

    def extend(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` after what the context holds (in ``N_BATCH`` batches)."""
        self._check_prompt(self._llm.n_tokens + len(tokens))
        self._llm.eval(tokens)

    def save_state(self) -> np.ndarray:
        """The KV state of what was evaluated, as bytes (a uint8 array)."""
        ctx = self._ctx()
        size = int(self._lib.llama_state_seq_get_size(ctx, 0))
        buf = np.empty(size, dtype=np.uint8)
        written = int(self._lib.llama_state_seq_get_data(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, 0))
        if written == 0 or written > size:
            raise ModelError("llama.cpp could not save the KV state")
        return buf[:written]

    def load_state(self, state: np.ndarray, tokens: list[int]) -> None:
        """Put back a state saved after evaluating exactly ``tokens``."""
        if len(tokens) >= self.n_ctx:
            raise UsageError(f"the cache holds {len(tokens)} tokens, more than the context of {self.n_ctx}")
        self._clear()
        state = np.ascontiguousarray(state, dtype=np.uint8)
        read = int(self._lib.llama_state_seq_set_data(
            self._ctx(), state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), state.size, 0))
        if read != state.size:
            self._clear()
            raise ModelError("llama.cpp refused the saved KV state (it does not fit this model or context)")
        self._llm.input_ids[: len(tokens)] = tokens
        self._llm.n_tokens = len(tokens)

    # ---- parametric memory ---------------------------------------------------------

    def load_lora(self, tensors: dict[str, np.ndarray], alpha: float, name: str) -> Any:
        """Load a LoRA adapter (not yet active: see ``use_loras``)."""
        from memos_cli.models.adapters import LoraAdapter

        adapter = LoraAdapter(self._lib, self._llm.model, self.identity.arch, alpha, tensors, name)
        self._adapters.append(adapter)
        return adapter

    @property
    def lib(self) -> Any:
        return self._lib

    def free_lora(self, adapter: Any) -> None:
        if adapter in self._adapters:
            self._adapters.remove(adapter)
        adapter.close()

    def use_loras(self, adapters: list[tuple[Any, float]]) -> None:
        """Make exactly these (adapter, scale) pairs active for what is evaluated next."""
        from memos_cli.models.adapters import set_loras

        set_loras(self._lib, self._ctx(), adapters)

    def set_steering(self, vector: np.ndarray | None, digest: str = "") -> None:
        """Add ``vector`` ((n_layer - 1, n_embd)) to the hidden states from now on (None: stop).
        ``digest`` names it in the identity that KV states are saved under. The evaluated
        tokens no longer match it, so the context is cleared."""
        from memos_cli.models.adapters import set_control

        set_control(self._lib, self._ctx(), vector, self.n_embd)
        self.identity = replace(self.identity, steering=digest if vector is not None else "")
        self._llm.reset()  # forget the evaluated tokens; the cells' data need not be zeroed (2-20 ms)
        memory = self._lib.llama_get_memory(self._ctx())
        if memory is not None:
            self._lib.llama_memory_clear(memory, False)

    def capture(self, names: dict[str, int], n_ctx: int) -> Any:
        """A second context on these weights that reads hidden states (``models.hidden.Capture``)."""
        from memos_cli.models.hidden import Capture

        return Capture(self._lib, self._llm.model, names, n_ctx=n_ctx, n_threads=default_threads())

    # ---- generation ------------------------------------------------------------

    def stream(
        self,
        tokens: list[int],
        *,
        temperature: float = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Iterator[str]:
        """Generate after ``tokens``, yielding text as it comes.

        Whatever part of ``tokens`` is already evaluated (a prefilled or
        restored head) is reused; the rest is evaluated first. Stops at an
        end-of-generation token, a stop string (not yielded) or ``max_tokens``.
        """
        self._check_prompt(len(tokens))
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        if seed is not None:
            self._llm.set_seed(seed)
        stops = [s for s in (stop or []) + self.format.stop if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        greedy = temperature <= 0
        produced = 0
        with _sigint_between_tokens() as interrupted:
            for token in self._llm.generate(
                tokens,
                temp=0.0 if greedy else temperature,
                top_k=1 if greedy else 40,
                top_p=0.95,
                min_p=0.05,
                repeat_penalty=1.1,
            ):
                if interrupted():
                    raise KeyboardInterrupt
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    break
                pending += decoder.decode(self._llm.detokenize([token], special=False))
                produced += 1
                cut = min((i for s in stops if (i := pending.find(s)) >= 0), default=-1)
                if cut >= 0:
                    if pending[:cut]:
                        yield pending[:cut]
                    return
                if produced >= max_tokens:
                    break
                held = _stop_start(pending, stops)  # what may yet become a stop string waits for the next token
                if len(pending) > held:
                    yield pending[: len(pending) - held]
                    pending = pending[len(pending) - held:]
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    def close(self) -> None:
        for adapter in getattr(self, "_adapters", []):
            adapter.ptr = None  # llama.cpp frees a model's adapters with it
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_start(text: str, stops: list[str]) -> int:
    """The length of the longest end of ``text`` that is the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def load_generator(spec: str | None, *, n_ctx: int = DEFAULT_CTX) -> Generator:
    """``None``: the default chat model (Gemma 3 270M from its package); else a path to a GGUF."""
    return Generator(model_path(spec), n_ctx=n_ctx)


def model_path(spec: str | None) -> Path:
    """The GGUF file ``spec`` names (None: the default chat model), checked to exist and be a GGUF."""
    path = registry.default_chat_model_path() if spec is None else Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"chat model not found: {path}")
    if not registry.is_gguf(path):
        raise ModelError(f"not a GGUF model file: {path}")
    return path


def identify(spec: str | None, n_ctx: int = DEFAULT_CTX) -> ModelIdentity:
    """A model's identity without loading it (name from the file name): enough to
    tell whether a cache was built for it."""
    path = model_path(spec)
    return ModelIdentity(sha256=registry.file_digest(path), name=path.stem, arch="", n_ctx=n_ctx, path=str(path))
