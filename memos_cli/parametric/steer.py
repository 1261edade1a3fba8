"""Steering vectors: a direction in the model's hidden states, built from contrastive texts, added
to the residual stream at generation time (llama.cpp's control vectors).

How a vector is built (``build``):

- each text is put in the chat prompt ``memos chat`` uses with no recalled memory, as the user's
  turn (instructions, ``User: TEXT``, ``Assistant:``), and the residual stream after each chosen
  layer (``l_out-N``) is read while llama.cpp evaluates it. In the chat prompt rather than as
  plain text because that is where the vector is applied: the states are those of a chat turn
  after the same instructions, and the ``Assistant:`` rows carry how the model is about to reply.
  Measured on Gemma 3 270M with 8 happy and 8 sad sentences, the chat-prompt vector was about 60%
  of the plain-text one's norm and kept answers coherent over a wider range of strengths (at
  strength 2, plain-text answers were garbage, chat-prompt ones still sentences);
- the rows averaged are the text's tokens and what follows it (``\\nAssistant:``): the
  instructions and ``User:`` before it are the same for every text (so they would cancel, and
  only dilute the mean by how long each text is), and the BOS row, whose norm is huge, is never
  among them;
- the mean over the positive texts minus the mean over the negative ones, per layer, zero outside
  the chosen layers. Row i of the result is layer i + 1 (layer 0 cannot be steered), as
  llama.cpp's control vectors are laid out.

The direction is stored raw (not normalised): strength 1 adds the whole difference between the
two means, strength 0 adds nothing, a negative strength steers towards the negative texts.
llama.cpp adds the vector just before ``l_out-N``, so a captured state includes any vector set:
the capture runs in its own context, where none is.

``calibrate`` finds the largest strength on a ladder that keeps every probe's answer sound, with
a margin from empty answers, and ``score`` measures how far a strength moves the model (for the
benchmark).

No typer or rich here. numpy comes with this module: the CLI imports it inside the command.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.errors import ModelError, UsageError

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator

Progress = Callable[[str, int, int], None]  # (phase, done, total)

# Neutral questions, about nothing a steering vector is made from: a vector that leaves all of
# them a sound answer is one chat can use. Four open ones (where tone shows; any sound answer
# will do) and two factual ones that Gemma 3 270M answers right, whose answer must stay right: a
# vector too strong makes every answer the same steered sentence ("Thank you for your beautiful
# photos!") long before it makes them empty.
DEFAULT_PROBES: tuple[tuple[str, str | None], ...] = (
    ("How was your day?", None),
    ("What do you think about Mondays?", None),
    ("Tell me about your weekend.", None),
    ("What should I cook tonight?", None),
    ("What is the capital of Japan?", "Tokyo"),
    ("What do bees make?", "honey"),
)
Probe = tuple[str, str | None]  # (question, a word the answer must contain, or None)
# Strengths tried in order; calibration stops at the first that fails. Finer at the low end, where
# it lands for Gemma 3 270M (0.125-0.25 for sentiment vectors from 2-12 sentences a side).
LADDER = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0)
PROBE_TOKENS = 24  # of each probe's greedy answer: an empty or broken answer shows in its first tokens
BREAK_LIMIT = 0.1  # the most probability calibration lets a vector give an empty start (see ``calibrate``)
MAX_TEXT_TOKENS = 1024  # a contrastive text is a sentence or a paragraph
MAX_TEXTS = 10_000

# Sentiment word lists for ``score`` and ``tone``: common words a reply starts with or contains.
POSITIVE_WORDS = ("great", "wonderful", "happy", "good", "love", "amazing", "fantastic", "excellent", "nice",
                  "lovely", "beautiful", "delighted", "glad", "enjoyed", "thank", "thanks", "perfect", "best")
NEGATIVE_WORDS = ("terrible", "awful", "sad", "bad", "hate", "horrible", "miserable", "angry", "boring", "worst",
                  "unfortunately", "sorry", "annoying", "upset", "tired", "difficult", "gloomy", "disappointed")


# ---- input --------------------------------------------------------------------------------------


def parse_texts(text: str, source: str) -> list[str]:
    """The texts of a file's content: one per non-blank line, or, when its first non-blank line is a
    JSON object, JSON lines each with a non-empty ``"text"``. ``UsageError`` naming ``source``
    and the line for a bad line, and when there are no texts."""
    return [t for t, _ in _parse_lines(text, source, ("text",), None)]


def parse_probes(text: str, source: str) -> list[Probe]:
    """Probe questions: one per non-blank line, or JSON lines ``{"q": QUESTION}`` with an optional
    ``"a"``, a word or phrase the answer must contain (as ``memos learn --eval`` files have)."""
    return _parse_lines(text, source, ("q", "text"), "a")


def _parse_lines(text: str, source: str, keys: Sequence[str], extra: str | None) -> list[tuple[str, str | None]]:
    from memos_cli.plaintext.units import loads_strict

    lines = [(i, line) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise UsageError(f"{source} has no texts (one per line, or JSON lines with \"{keys[0]}\")")
    jsonl = lines[0][1].lstrip().startswith("{")
    out: list[tuple[str, str | None]] = []
    for lineno, line in lines:
        if not jsonl:
            out.append((line.strip(), None))
            continue
        try:
            record = loads_strict(line)
        except ValueError as exc:
            raise UsageError(f"{source} line {lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        found = [record[k] for k in keys if k in record] if isinstance(record, dict) else []
        value = found[0] if found else None
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{source} line {lineno}: needs a non-empty \"{keys[0]}\" string")
        second = record.get(extra) if extra else None
        if second is not None and (not isinstance(second, str) or not second.strip()):
            raise UsageError(f"{source} line {lineno}: \"{extra}\" must be a non-empty string")
        out.append((value.strip(), second.strip() if second else None))
    if len(out) > MAX_TEXTS:
        raise UsageError(f"{source} has {len(out)} texts; at most {MAX_TEXTS}")
    return out


def default_layers(n_layer: int) -> tuple[int, int]:
    """The middle of the model, where a direction steers without breaking the output:
    4-11 of Gemma 3 270M's 18 layers (from a quarter to two thirds of the way)."""
    first = max(1, n_layer // 4)
    return first, min(n_layer - 1, max(first, 2 * n_layer // 3 - 1))


def parse_layers(text: str) -> tuple[int, int]:
    """``"A-B"`` (or ``"N"``) as (A, B); checked against a model by ``check_layers``."""
    match = re.fullmatch(r"\s*(\d{1,4})\s*(?:-\s*(\d{1,4})\s*)?", text or "")
    if match is None:
        raise UsageError(f"bad layers {text!r}: use FIRST-LAST, e.g. 4-11")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if first > last:
        raise UsageError(f"bad layers {text!r}: the first layer is after the last")
    return first, last


def check_layers(layers: tuple[int, int], n_layer: int) -> tuple[int, int]:
    first, last = layers
    if not 1 <= first <= last <= n_layer - 1:
        raise UsageError(f"bad layers {first}-{last}: this model's steerable layers are 1-{n_layer - 1} "
                         f"(layer 0 cannot be steered)")
    return first, last


def layers_text(layers: tuple[int, int]) -> str:
    return f"{layers[0]}-{layers[1]}"


# ---- building ---------------------------------------------------------------------------------


def _scaffold(teacher: Any) -> list[int]:
    """The prompt's tokens before the user's text (instructions, ``User:``): what two questions
    that share nothing have in common."""
    a, b = teacher.question("A"), teacher.question("B")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def build(generator: Generator, pos: Sequence[str], neg: Sequence[str], layers: tuple[int, int],
          progress: Progress | None = None) -> np.ndarray:
    """The mean-difference direction, shape (n_layer - 1, n_embd), float32, zero outside ``layers``
    (1-based, inclusive; row i is layer i + 1). See the module's docstring. A text's runs of
    white space (line breaks too) become single spaces: a user's turn is one line."""
    from memos_cli.parametric.learn import Teacher

    if not pos or not neg:
        raise UsageError("give at least one positive and one negative text")
    for side, texts in (("positive", pos), ("negative", neg)):
        for i, t in enumerate(texts, 1):
            if not isinstance(t, str) or not t.strip():
                raise UsageError(f"{side} text {i} is empty")
    first, last = check_layers(layers, generator.n_layer)
    teacher = Teacher(generator)
    lead = _scaffold(teacher)
    prompts = [teacher.question(" ".join(t.split())) for t in (*pos, *neg)]
    for i, p in enumerate(prompts):
        if len(p) - len(lead) > MAX_TEXT_TOKENS:
            side, k = ("positive", i + 1) if i < len(pos) else ("negative", i - len(pos) + 1)
            raise UsageError(f"{side} text {k} is {len(p) - len(lead)} tokens; at most {MAX_TEXT_TOKENS}")
    names = {f"l_out-{n}": generator.n_embd for n in range(first, last + 1)}
    # The last layer computes only the rows whose logits are asked for: ask for them all then.
    every_row = last == generator.n_layer - 1
    sums = {True: np.zeros((last - first + 1, generator.n_embd), np.float64),
            False: np.zeros((last - first + 1, generator.n_embd), np.float64)}
    capture = generator.capture(names, n_ctx=_ctx_size(max(len(p) for p in prompts)))
    try:
        capture.set_prefix(lead)
        for i, tokens in enumerate(prompts):
            start = capture.start_of(tokens)
            states, _ = capture.run(tokens, list(range(start, len(tokens))) if every_row else [])
            skip = max(0, len(lead) - start)  # when the prefix could not be reused: its rows are not the text's
            rows = np.stack([states[f"l_out-{n}"][skip:].mean(axis=0) for n in range(first, last + 1)])
            if not np.isfinite(rows).all():
                raise ModelError("the model's hidden states are not finite numbers; the vector cannot be built")
            sums[i < len(pos)] += rows
            if progress:
                progress("reading hidden states", i + 1, len(prompts))
    finally:
        capture.close()
    direction = np.zeros((generator.n_layer - 1, generator.n_embd), np.float32)
    direction[first - 1 : last] = (sums[True] / len(pos) - sums[False] / len(neg)).astype(np.float32)
    if not np.any(direction):
        raise UsageError("the positive and negative texts give the same hidden states: there is no direction")
    return direction


def _ctx_size(tokens: int) -> int:
    return max(256, -(-(tokens + 1) // 256) * 256)


# ---- applying ---------------------------------------------------------------------------------


def digest(vector: np.ndarray | None) -> str:
    """A short name for an applied vector (what KV states are saved under); "" for none."""
    if vector is None:
        return ""
    return "steer:" + hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()[:16]


@contextmanager
def steering(generator: Generator, direction: np.ndarray, strength: float) -> Iterator[None]:
    """``direction * strength`` set on the generator while inside; none after."""
    vector = (direction * np.float32(strength)).astype(np.float32)
    generator.set_steering(vector, digest(vector))
    try:
        yield
    finally:
        generator.set_steering(None)


def answer(generator: Generator, tokens: list[int], max_tokens: int = PROBE_TOKENS) -> str:
    """The greedy answer after ``tokens``, as ``memos chat`` streams it (its stop strings applied)."""
    return "".join(generator.stream(tokens, temperature=0.0, max_tokens=max_tokens))


def problem(text: str, expected: str | None = None) -> str | None:
    """Why an answer is not a sound one, or None. Checked, in order: empty (nothing but spaces: a
    base model that jumps to the next ``User:`` turn gives this); no letter or digit; mostly blank
    or invisible characters (spaces, U+FEFF, control or replacement characters); runs of three or
    more spaces at its start or inside a line (a vector too strong scatters words and emoji between
    runs of spaces; indentation after a line break is allowed); a loop (a word three times in a
    row, or 8 words or more of which fewer than 40% are distinct); and, when ``expected`` is
    given, that it contains it (case-insensitively)."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if not any(c.isalnum() for c in stripped):
        return "no letters or digits"
    blank = sum(1 for c in text if c.isspace() or c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cf", "Co", "Cn"))
    if blank > 0.4 * len(text):
        return "mostly blank or invisible characters"
    if re.match(r"[ \t]{3,}", text) or re.search(r"\S[ \t]{3,}\S", text):
        return "runs of spaces"
    words = re.findall(r"\w+", stripped.lower())
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)) or (
            len(words) >= 8 and len(set(words)) < 0.4 * len(words)):
        return "repeats itself"
    if expected is not None and expected.casefold() not in stripped.casefold():
        return f"does not say {expected!r}"
    return None


def _probes(probes: Sequence[str | Probe]) -> list[Probe]:
    out = [(p, None) if isinstance(p, str) else (p[0], p[1]) for p in probes]
    out = [(" ".join(q.split()), a) for q, a in out]
    if not out or not all(q for q, _ in out):
        raise UsageError("give at least one probe question, none empty")
    return out


class FirstToken:
    """The first answer token's log-probabilities for some prompts under a steering strength, read
    in a llama.cpp context of its own (the chat context and its KV state untouched). The vector
    changes the instructions' states too, so they are evaluated once per strength and shared."""

    def __init__(self, generator: Generator, prompts: list[list[int]], head: list[int]) -> None:
        self.generator, self.prompts, self.head = generator, prompts, head
        self.capture = generator.capture({}, n_ctx=_ctx_size(max(len(p) for p in prompts)))

    def at(self, direction: np.ndarray, strength: float) -> list[np.ndarray]:
        from memos_cli.models.adapters import set_control

        gen = self.generator
        vector = (direction * np.float32(strength)).astype(np.float32) if strength else None
        set_control(gen.lib, self.capture.ctx, vector, gen.n_embd)
        self.capture.set_prefix(self.head)
        rows = []
        for tokens in self.prompts:
            _, logits = self.capture.run(tokens, [len(tokens) - 1])
            row = logits[0].astype(np.float64)
            rows.append(row - _logsumexp(row))
        return rows

    def close(self) -> None:
        self.capture.close()


_BREAKS: dict[tuple[str, int], np.ndarray] = {}


def break_tokens(generator: Generator, n_vocab: int) -> np.ndarray:
    """The tokens with which an answer ends before it starts: those that print nothing (the end of
    a turn, control tokens) and those that start with a line break (in the plain ``User:`` /
    ``Assistant:`` format, the way to the next ``User:`` turn). Read once per model (about 1 s)."""
    key = (generator.identity.sha256, n_vocab)
    if key not in _BREAKS:
        _BREAKS[key] = np.array([i for i in range(n_vocab) if (p := generator.detokenize([i])) == "" or p.startswith("\n")],
                                dtype=np.int64)
    return _BREAKS[key]


def _risks(rows: list[np.ndarray], breaks: np.ndarray) -> list[float]:
    return [float(np.exp(row[breaks]).sum()) for row in rows]


def calibrate(generator: Generator, direction: np.ndarray, probes: Sequence[str | Probe] = DEFAULT_PROBES,
              ladder: Sequence[float] = LADDER, *, max_tokens: int = PROBE_TOKENS,
              progress: Progress | None = None) -> tuple[float, list[dict[str, Any]]]:
    """The largest strength on ``ladder`` (tried in increasing order, stopping at the first that
    fails) at which every probe passes: so every strength below it on the ladder passes too.

    A probe passes at a strength when, in the chat prompt with the vector at that strength:

    - its first answer token is a break (``break_tokens``: the answer would be empty, or start
      on a new line) with probability at most ``BREAK_LIMIT``, or at most what it was unsteered
      when that was more. Greedy decoding gives an empty answer once a break token wins, and on
      a flat first-token distribution that is a near tie: measured on Gemma 3 270M, empty answers
      appeared from a break probability of about 0.10, at strengths where most probes were still
      fine. Checking the probability rather than the greedy outcome keeps a margin from them, and
      costs no generation;
    - its greedy answer (``PROBE_TOKENS`` tokens, as chat decodes) passes ``problem``. A probe is a
      question, or (question, expected): an expected answer is checked only when the untouched
      model gives it, so a probe it gets wrong anyway is checked for soundness only.

    Returns the strength and a table, a row per strength tried (0 first: the untouched model):
    {"strength", "ok", "break": the largest break probability, "failed": [{"probe", "answer",
    "why"}]}. ``UsageError`` when even the smallest strength fails."""
    from memos_cli.parametric.learn import Teacher

    checked = _probes(probes)
    steps = sorted({float(s) for s in ladder if s > 0})
    if not steps:
        raise UsageError("the calibration ladder needs a strength above 0")
    teacher = Teacher(generator)
    prompts = [teacher.question(q) for q, _ in checked]
    done, total = 0, len(steps) * len(prompts)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress("calibrating", done, total)

    table: list[dict[str, Any]] = []
    first = FirstToken(generator, prompts, teacher.head_tokens)
    try:
        base = first.at(direction, 0.0)
        breaks = break_tokens(generator, len(base[0]))
        limits = [max(BREAK_LIMIT, r) for r in _risks(base, breaks)]
        failed = []
        generator.set_steering(None)
        for i, (q, a) in enumerate(checked):
            if a is None:
                continue
            text = answer(generator, prompts[i], max_tokens)
            if problem(text, a):
                failed.append({"probe": q, "answer": text[:80], "why": f"does not say {a!r} even unsteered; not checked"})
                checked[i] = (q, None)
        table.append({"strength": 0.0, "ok": True, "break": round(max(_risks(base, breaks)), 4), "failed": failed})
        best = 0.0
        for strength in steps:
            risks = _risks(first.at(direction, strength), breaks)
            failed = [{"probe": q, "answer": "", "why": f"its answer ends or breaks the line at once with probability "
                                                       f"{r:.3f} (limit {lim:.3f})"}
                      for (q, _), r, lim in zip(checked, risks, limits, strict=True) if r > lim]
            if not failed:
                with steering(generator, direction, strength):
                    for (q, a), tokens in zip(checked, prompts, strict=True):
                        text = answer(generator, tokens, max_tokens)
                        why = problem(text, a)
                        if why:
                            failed.append({"probe": q, "answer": text[:80], "why": why})
                        tick()
            table.append({"strength": strength, "ok": not failed, "break": round(max(risks), 4), "failed": failed})
            if failed:
                break
            best = strength
    finally:
        first.close()
    if progress:
        progress("calibrating", total, total)
    if best == 0.0:
        f = table[-1]["failed"][0]
        raise UsageError(f"even at strength {steps[0]:g} the answer to {f['probe']!r} is not sound ({f['why']}): "
                         "the vector breaks the model's answers; give --strength to save it anyway")
    return best, table


# ---- measuring --------------------------------------------------------------------------------


def _first_tokens(generator: Generator, words: Sequence[str]) -> set[int]:
    out: set[int] = set()
    for w in words:
        for form in (w, w.capitalize()):
            tokens = generator.tokenize(" " + form)
            if tokens:
                out.add(tokens[0])
    return out


def score(generator: Generator, direction: np.ndarray, strengths: Sequence[float],
          probes: Sequence[str | Probe] = DEFAULT_PROBES, pos_words: Sequence[str] = POSITIVE_WORDS,
          neg_words: Sequence[str] = NEGATIVE_WORDS) -> list[float]:
    """For each strength, the mean over the probes of the first answer token's log-odds of the
    positive words against the negative ones: log P(a positive word's first token) - log P(a
    negative word's), over the whole vocabulary, after ``Assistant:`` in the chat prompt.

    Chosen over counting words in generated answers because it is smooth and deterministic (no
    sampling, no dependence on where an answer happens to go), sees the whole distribution rather
    than its top token, and costs one evaluation per probe, no generation. The words are given
    with a leading space and capitalised, as an answer starts; a first token shared by both lists
    counts for neither."""
    from memos_cli.parametric.learn import Teacher

    good, bad = _first_tokens(generator, pos_words), _first_tokens(generator, neg_words)
    good, bad = sorted(good - bad), sorted(bad - good)
    if not good or not bad:
        raise UsageError("the positive and negative word lists need first tokens of their own")
    teacher = Teacher(generator)
    first = FirstToken(generator, [teacher.question(q) for q, _ in _probes(probes)], teacher.head_tokens)
    try:
        return [float(np.mean([_logsumexp(row[good]) - _logsumexp(row[bad]) for row in first.at(direction, s)]))
                for s in strengths]
    finally:
        first.close()


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + float(np.log(np.exp(x - top).sum()))


def tone(text: str, pos_words: Sequence[str] = POSITIVE_WORDS, neg_words: Sequence[str] = NEGATIVE_WORDS) -> int:
    """Positive minus negative words in a text (a coarse check on generated answers)."""
    words = re.findall(r"[a-z]+", text.lower())
    good, bad = set(pos_words), set(neg_words)
    return sum(w in good for w in words) - sum(w in bad for w in words)


# ---- the record --------------------------------------------------------------------------------


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()[:16]


def model_of(generator: Generator) -> dict[str, Any]:
    ident = generator.identity
    return {"sha256": ident.sha256, "name": ident.name, "arch": ident.arch,
            "n_layer": generator.n_layer, "n_embd": generator.n_embd}


def make_blob(record: Any, direction: np.ndarray, layers: tuple[int, int]) -> bytes:
    """The blob of a steering vector for ``record`` (a ``params.ParamRecord``)."""
    from memos_cli.store import params

    return params.encode_blob("steer", {"direction": direction.astype(np.float32)},
                              params.metadata_for(record, layers=layers_text(layers)))


__all__ = [
    "BREAK_LIMIT", "DEFAULT_PROBES", "LADDER", "NEGATIVE_WORDS", "POSITIVE_WORDS", "FirstToken", "break_tokens", "build",
    "calibrate", "check_layers", "default_layers", "digest", "layers_text", "make_blob", "model_of", "parse_layers",
    "parse_probes", "parse_texts", "problem", "score", "steering", "tone",
]
