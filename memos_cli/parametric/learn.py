"""Learning a LoRA adapter from memory units: the training examples, reading their hidden
states, training (``lora``), and checking the result with llama.cpp.

What a unit teaches:

- a unit whose ``meta`` has ``question`` and ``answer`` (chat episodes have
  them; imports can give them) teaches that answer to that question, in the
  chat prompt format ``memos chat`` uses with no recalled memory: the
  instructions, ``User: question``, ``Assistant:``, then `` answer`` and the
  end-of-text token;
- any other unit teaches its text, as plain text after the start token.

Besides, a fixed set of general questions (``retain``) is asked with the
untouched model's own greedy answers as targets, so that the adapter changes
what it learned and as little else as it can.

Nothing is written to the store here: ``learn`` returns the adapter's arrays
and figures, and the caller saves them in one commit. Interrupting it leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.activation import prompt
from memos_cli.errors import UsageError
from memos_cli.parametric import retain
from memos_cli.parametric.lora import Block, LoraOptions, Rows, train

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator
    from memos_cli.plaintext.units import MemoryUnit

RETAIN_TOKENS = 16  # of each general question's base answer kept as a target
TOP_CANDIDATES = 32  # of the base model's likeliest tokens per row, in the candidate vocabulary
FORMAT_VERSION = 1

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def qa_of(unit: MemoryUnit) -> tuple[str, str] | None:
    """The (question, answer) a unit teaches, when its meta has both as text."""
    meta = unit.meta or {}
    q, a = meta.get("question"), meta.get("answer")
    if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
        return " ".join(q.split()), a.strip()
    return None


@dataclass
class Example:
    tokens: list[int]  # what is evaluated: the prompt and all but the last target token
    start: int  # the position whose output predicts the first target token
    target: list[int]
    kind: str  # "qa", "text" or "retain"
    unit: str | None = None
    variant: bool = False  # a rephrasing of a unit's question: learned, not checked

    @property
    def rows(self) -> list[int]:
        return list(range(self.start, self.start + len(self.target)))


class Teacher:
    """The chat prompt format, as tokens, for a model."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.head = prompt.head_text([])
        self.head_tokens = generator.tokenize(self.head, head=True)
        self.eos = generator.eos_token()

    def question(self, question: str) -> list[int]:
        _, tail = self.generator.format.render(self.head, "", [], question)
        return self.head_tokens + self.generator.tokenize(tail)

    def answer(self, answer: str) -> list[int]:
        return self.generator.tokenize(" " + answer.strip()) + [self.eos]

    def examples(self, unit: MemoryUnit, variants: int = 0) -> list[Example]:
        qa = qa_of(unit)
        if qa is not None:
            t = self.answer(qa[1])
            out = []
            for n, question in enumerate([qa[0], *rephrasings(qa[0])[:variants]]):
                p = self.question(question)
                out.append(Example(p + t[:-1], len(p) - 1, t, "qa", unit.id, variant=n > 0))
            return out
        tokens = self.generator.tokenize(unit.text.strip(), head=True) + [self.eos]
        if len(tokens) < 3:
            raise UsageError(f"unit {unit.id} is too short to learn from")
        return [Example(tokens[:-1], 0, tokens[1:], "text", unit.id)]


def rephrasings(question: str) -> list[str]:
    """The same question in other conversational wrappings: what a user says around a question varies,
    and an adapter should answer it whatever the wrapping."""
    q = question.strip()
    bare = q.rstrip("?").strip()
    lower = bare[:1].lower() + bare[1:]
    return [f"Remind me, {lower}?", f"Quick question: {q}", f"Do you know {lower}?", f"{bare}? Tell me.",
            f"Can you tell me: {lower}?"]


def retain_examples(teacher: Teacher, count: int, progress: Progress | None = None) -> list[Example]:
    """The general questions with the untouched model's greedy answers (remembered per model and
    prompt format in the cache directory: generating them is most of their cost)."""
    from memos_cli.models.registry import cache_dir

    gen = teacher.generator
    questions = list(retain.QUESTIONS[:count])
    if not questions:
        return []
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, gen.identity.sha256, teacher.head_tokens, RETAIN_TOKENS,
                                     questions]).encode()).hexdigest()[:24]
    path = cache_dir() / "params" / f"retain-{key}.json"
    answers: list[list[int]] | None = None
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(answers, list) and len(answers) == len(questions)):
            answers = None
    except (OSError, ValueError):
        answers = None
    prompts = [teacher.question(q) for q in questions]
    if answers is None:
        if progress:
            progress("answering general questions", 0, 1)
        answers = gen.greedy_many(prompts, RETAIN_TOKENS)
        from memos_cli.plaintext.files import write_private

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, json.dumps(answers).encode())
        except OSError:
            pass  # only a cache
    out = []
    for p, a in zip(prompts, answers, strict=True):
        if a:
            out.append(Example(p + a[:-1], len(p) - 1, a, "retain"))
    return out


@dataclass
class Learned:
    """An adapter and what went into it."""

    tensors: dict[str, np.ndarray]  # blk.N.<name>.weight.lora_a / .lora_b
    options: LoraOptions
    layer: int
    loss: float
    examples: int
    rows: int
    candidates: int
    seconds: dict[str, float] = field(default_factory=dict)
    accuracy: float = 0.0  # of learned positions where llama.cpp's top token is the target
    rounds: int = 1  # of training and checking
    examples_right: int = 0  # units whose whole target llama.cpp reproduces
    retained: float = 1.0  # of the general questions' positions whose top token did not change

    @property
    def alpha(self) -> float:
        return self.options.alpha


def learn(generator: Generator, units: list[MemoryUnit], options: LoraOptions,
          progress: Progress | None = None) -> Learned:
    """Train an adapter on ``units`` for ``generator``'s model.

    After training, every example is evaluated again by llama.cpp with the
    adapter, over the whole vocabulary: a position where another token wins
    (one outside the candidates, or a rounding difference with llama.cpp's
    quantised arithmetic) adds that token to the candidates, and training goes
    on (at most ``VERIFY_ROUNDS`` times).
    """
    from memos_cli.models.adapters import set_loras
    from memos_cli.models.weights import Weights

    if not units:
        raise UsageError("no units selected to learn from")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if progress:
        progress("reading the model's weights", 0, 1)
    weights = Weights(generator.identity.path)
    block = Block(weights)
    timings["weights_s"] = time.perf_counter() - started
    teacher = Teacher(generator)
    examples = [ex for u in units for ex in teacher.examples(u, options.variants)]
    t = time.perf_counter()
    examples += retain_examples(teacher, options.general, progress)
    timings["retain_s"] = time.perf_counter() - t

    capture = generator.capture(block.names, n_ctx=_ctx_size(max(len(e.tokens) for e in examples)))
    try:
        t = time.perf_counter()
        capture.set_prefix(teacher.head_tokens)
        data = _read_examples(capture, block, examples, progress)
        timings["capture_s"] = time.perf_counter() - t
        t = time.perf_counter()
        extra = np.empty(0, dtype=np.int64)
        lora = None
        rounds = 0
        steps = options.steps
        while True:
            rows, cands = data.rows(extra)
            out_rows = weights.output_rows(cands)
            lora, loss = train(block, rows, out_rows, options,
                               (lambda s, n, _loss: progress("training", s, n)) if progress else None,
                               init=lora, steps=steps, seed=options.seed + rounds)
            tensors = _tensors(block, lora)
            adapter = generator.load_lora(tensors, options.alpha, "learning")
            set_loras(generator.lib, capture.ctx, [(adapter, 1.0)])
            check = _verify(capture, examples, progress)
            set_loras(generator.lib, capture.ctx, [])
            generator.free_lora(adapter)
            rounds += 1
            if not check.wrong.size or rounds > VERIFY_ROUNDS:
                break
            extra = np.unique(np.concatenate([extra, check.winners]))
            steps = max(1, options.steps // 3)
        timings["train_s"] = time.perf_counter() - t
    finally:
        capture.close()
    timings["total_s"] = time.perf_counter() - started
    learned = int(sum(len(e.target) for e in examples if e.kind != "retain" and not e.variant))
    return Learned(tensors, options, block.layer, loss, len(units), learned, int(cands.size), timings,
                   accuracy=1.0 - check.wrong.size / max(1, learned), rounds=rounds,
                   examples_right=check.examples_right, retained=check.retained)


VERIFY_ROUNDS = 3


@dataclass
class _Data:
    """Every example's captured rows, and the base model's likeliest tokens at each."""

    heads: np.ndarray
    resid: np.ndarray
    targets: np.ndarray  # token id; -1 for a retained row
    top_ids: np.ndarray  # (rows, TOP_CANDIDATES)
    top_probs: np.ndarray
    n_vocab: int

    def rows(self, extra: np.ndarray) -> tuple[Rows, np.ndarray]:
        """Training rows over the candidate vocabulary: every target, the base model's likeliest
        tokens at every row, and ``extra``."""
        wanted = self.targets[self.targets >= 0]
        cands = np.unique(np.concatenate([self.top_ids.ravel(), wanted, extra]))
        index = np.full(self.n_vocab, -1, dtype=np.int64)
        index[cands] = np.arange(cands.size)
        base = np.zeros((self.top_ids.shape[0], cands.size), dtype=np.float32)
        np.put_along_axis(base, index[self.top_ids], self.top_probs, axis=1)
        tgt = np.where(self.targets >= 0, index[np.maximum(self.targets, 0)], -1)
        return Rows(self.heads, self.resid, tgt, base), cands


def _read_examples(capture: Any, block: Block, examples: list[Example], progress: Progress | None) -> _Data:
    heads_name, resid_name = f"kqv_out-{block.layer}", f"l_out-{block.layer - 1}"
    heads: list[np.ndarray] = []
    resid: list[np.ndarray] = []
    targets: list[int] = []
    top_ids: list[np.ndarray] = []
    top_probs: list[np.ndarray] = []
    for i, ex in enumerate(examples):
        states, logits = capture.run(ex.tokens, ex.rows)
        first = capture.start_of(ex.tokens)
        local = [r - first for r in ex.rows]
        heads.append(states[heads_name][local])
        resid.append(states[resid_name][local])
        targets += ex.target if ex.kind != "retain" else [-1] * len(ex.rows)
        ids, probs = _top(logits, TOP_CANDIDATES)
        top_ids.append(ids)
        top_probs.append(probs)
        if progress:
            progress("reading hidden states", i + 1, len(examples))
    return _Data(np.concatenate(heads), np.concatenate(resid), np.array(targets, dtype=np.int64),
                 np.concatenate(top_ids), np.concatenate(top_probs), block.shape.n_vocab)


@dataclass
class _Check:
    wrong: np.ndarray  # learned positions where another token wins
    winners: np.ndarray  # the tokens that win where they should not, and near winners
    examples_right: int  # units whose every target token wins (on their own question)
    retained: float  # of retained positions whose top token is still the base model's


def _verify(capture: Any, examples: list[Example], progress: Progress | None) -> _Check:
    """Evaluate every example with llama.cpp (the adapter set on ``capture``'s context)."""
    wrong: list[int] = []
    winners: list[np.ndarray] = []
    right = 0
    kept = total_kept = 0
    position = 0  # of the example's first row among all examples' rows
    total = sum(1 for ex in examples if not ex.variant)
    done = 0
    for ex in examples:
        first, position = position, position + len(ex.target)
        if ex.variant:
            continue
        _, logits = capture.run(ex.tokens, ex.rows)
        ok = np.argmax(logits, axis=1) == np.array(ex.target)
        winners.append(np.argpartition(-logits, 4, axis=1)[:, :4][~ok].ravel())
        if ex.kind == "retain":
            kept += int(ok.sum())
            total_kept += ok.size
        else:
            right += bool(ok.all())
            wrong += [first + j for j in np.flatnonzero(~ok)]
        done += 1
        if progress:
            progress("checking with llama.cpp", done, total)
    found = np.unique(np.concatenate(winners)) if winners else np.empty(0, dtype=np.int64)
    return _Check(np.array(wrong, dtype=np.int64), found.astype(np.int64), right,
                  kept / total_kept if total_kept else 1.0)


def _tensors(block: Block, lora: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for name, (a, b) in lora.items():
        tensors[f"{block.tensor_name(name)}.lora_a"] = a
        tensors[f"{block.tensor_name(name)}.lora_b"] = b
    return tensors


def _top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` likeliest tokens and their probabilities, renormalised among them."""
    ids = np.argpartition(-logits, k, axis=1)[:, :k]
    top = np.take_along_axis(logits, ids, axis=1).astype(np.float64)
    top = np.exp(top - top.max(1, keepdims=True))
    return ids.astype(np.int64), (top / top.sum(1, keepdims=True)).astype(np.float32)


def _ctx_size(tokens: int) -> int:
    size = 64
    while size < tokens:
        size *= 2
    return size


GATE_ACCURACY = 0.9  # of the learned positions llama.cpp must reproduce for the adapter to be enabled


def passes_gate(learned: Learned) -> tuple[bool, str]:
    if learned.accuracy >= GATE_ACCURACY:
        return True, f"reproduces {learned.accuracy:.0%} of what it learned (gate: {GATE_ACCURACY:.0%})"
    return False, (f"reproduces only {learned.accuracy:.0%} of what it learned (gate: {GATE_ACCURACY:.0%}); "
                   "more --steps or a higher --rank may help")


def to_record(name: str, cube: str, generator: Generator, units: list[MemoryUnit], learned: Learned,
              *, enabled: bool, report: dict[str, Any]) -> tuple[Any, bytes]:
    """The record and the blob of a learned adapter (the blob holds nothing that changes from
    one run to the next: the same units, options and seed give the same bytes)."""
    from memos_cli.parametric.routing import FLOOR
    from memos_cli.store import params

    identity = generator.identity
    record = params.ParamRecord(
        name=name, kind="lora", cube=cube,
        model={"sha256": identity.sha256, "name": identity.name, "arch": identity.arch,
               "n_layer": generator.n_layer, "n_embd": generator.n_embd},
        sources=[{"id": u.id, "version": u.version} for u in units],
        enabled=enabled, scale=1.0, gate=FLOOR,
        hparams={**learned.options.to_json(), "layer": learned.layer, "format": FORMAT_VERSION},
        loss=round(float(learned.loss), 6), report=report)
    meta = params.metadata_for(record, rank=str(learned.options.rank), alpha=str(learned.options.alpha))
    return record, params.encode_blob("lora", learned.tensors, meta)
