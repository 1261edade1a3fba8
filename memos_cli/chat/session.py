"""A chat with memory.

A session first puts its *head* in the model's context: the instructions and
the cube's block of activation memory (its pinned units, or whatever
selection its newest activation was built from). When a current activation
memory exists for this model, its saved KV state is loaded; otherwise the
head is prefilled (and chat says why). Every turn then starts from that head:

1. recall the question against the cube (the store's hybrid recall, with the
   user's filters), leaving out what the head already holds and this
   session's own exchanges;
2. after the head comes the conversation so far (oldest turns dropped first
   when the context is short), then the best memories that fit in ``budget``
   tokens, then the question;
3. generate, streaming;
4. save the exchange as an ``episode`` unit with the session id in its
   metadata, one commit per turn: an interrupted or crashed session keeps
   every answered turn, and a turn is never half saved.

The model never sees a previous turn's recalled memories, and a loaded
cache is never changed in place: each turn starts from a saved state of the
head and the conversation's exchanges, which an interactive session (and
the server) keeps and extends by the last exchange, so the work before the
first token does not grow with the conversation. Without a kept state, the
head's own is restored (3 ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos_cli import activation
from memos_cli.activation import prompt
from memos_cli.errors import UsageError
from memos_cli.plaintext.retrieval import Filters
from memos_cli.plaintext.units import MemoryUnit, new_id

if TYPE_CHECKING:
    import numpy as np

    from memos_cli.models.generator import Generator
    from memos_cli.parametric.active import ParametricSet
    from memos_cli.store.store import MemoryStore

DEFAULT_K = 8
DEFAULT_BUDGET = 1024  # tokens of recalled memories per turn
# A model that goes on to write the next turn's block of memories, as a base model writing a transcript does
STOP = ["\n" + prompt.RECALLED_TITLE]
DEFAULT_MIN_RELEVANCE = 0.5  # recalled memories less likely than not to be about the question stay out of the prompt


@dataclass
class ChatOptions:
    cube: str = "default"
    user: str | None = None
    filters: Filters = field(default_factory=Filters)  # the user's recall filters; ``cube`` is set from ``cube``
    k: int | None = None  # None: [chat] k of memos.toml, else DEFAULT_K
    budget: int | None = None  # None: [chat] budget of memos.toml, else DEFAULT_BUDGET
    min_relevance: float | None = None  # None: [chat] min_relevance of memos.toml, else DEFAULT_MIN_RELEVANCE
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = None
    use_kv: bool = True
    kv_id: str | None = None
    rebuild: bool = False
    save: bool = True
    keep_head: bool = False  # keep the prefilled head's state for later turns (interactive sessions)
    recall: bool = True  # False: no plaintext memory in the prompt (no memory block, nothing recalled)
    params: dict[str, float | None] = field(default_factory=dict)  # --param NAME[=SCALE]
    use_params: bool = True  # False (--no-param): no parametric memory at all
    privacy: dict[str, str] = field(default_factory=dict)  # --privacy: this session's override of the policy

    def __post_init__(self) -> None:
        if self.k is not None and not 1 <= self.k <= 100:
            raise UsageError(f"bad -k {self.k}: use a whole number from 1 to 100")
        if self.budget is not None and self.budget < 0:
            raise UsageError(f"bad --budget {self.budget}: use a number of tokens from 0")
        if self.min_relevance is not None and not 0.0 <= self.min_relevance <= 1.0:
            raise UsageError(f"bad --min-relevance {self.min_relevance}: use a number from 0 to 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise UsageError(f"bad --temperature {self.temperature}: use a number from 0 to 2")
        if self.max_tokens < 1:
            raise UsageError(f"bad --max-tokens {self.max_tokens}: use a whole number from 1")


@dataclass
class Head:
    """What the session's head holds and where it came from."""

    source: str  # "kv" (a loaded activation memory) or "prefill"
    text: str
    tokens: list[int]
    units: list[str]
    activation: str | None = None
    seconds: float = 0.0
    kv_read_seconds: float = 0.0
    kv_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "tokens": len(self.tokens), "units": self.units, "activation": self.activation,
                "seconds": round(self.seconds, 4), "kv_read_seconds": round(self.kv_read_seconds, 4),
                "kv_bytes": self.kv_bytes}


@dataclass
class Turn:
    question: str
    answer: str = ""
    memories: list[MemoryUnit] = field(default_factory=list)
    saved: str | None = None  # the episode unit's id
    unsaved: str | None = None  # why an answered turn was not saved (the privacy policy refused it)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: int = 0  # of the answer
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, not evaluated for this turn (a kept or loaded KV state)
    parametric: list[dict[str, Any]] = field(default_factory=list)  # what each candidate did, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "memories": [{"id": u.id, "text": u.text} for u in self.memories],
            "parametric": self.parametric,
            "saved": self.saved,
            **({"unsaved": self.unsaved} if self.unsaved else {}),
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


class ChatSession:
    """One conversation; ``ask`` streams an answer, then ``last`` holds the turn."""

    def __init__(self, store: MemoryStore, generator: Generator, options: ChatOptions) -> None:
        self.store = store
        self.generator = generator
        self.options = options
        self.id = new_id()
        self.notices: list[str] = []
        self.history: list[tuple[str, str]] = []
        self.turns: list[Turn] = []
        self.last: Turn | None = None
        self._filters = Filters(**{**options.filters.__dict__, "cube": options.cube})
        self._state: np.ndarray | None = None  # the head's KV state, when kept
        self._live: list[list[int]] | None = None  # the pieces the context holds now, nothing after them
        self._kept: tuple[list[list[int]], np.ndarray] | None = None  # head and conversation pieces, and their state
        self._piece_tokens: dict[str, list[int]] = {}
        self._texts: dict[tuple[tuple[str, str], ...], str] = {}
        self.parametric = self._parametric()  # before the head: steering vectors change its KV state
        self.head = self._prepare()

    def _parametric(self) -> ParametricSet | None:
        from memos_cli.store import params

        opts = self.options
        if not opts.use_params:
            if opts.params:
                raise UsageError("--param and --no-param contradict each other")
            return None
        if not opts.params and not params.records(self.store, opts.cube):
            return None
        from memos_cli.parametric.active import ParametricSet

        found = ParametricSet(self.store, self.generator, opts.cube, opts.params)
        self.notices += found.notices
        return found if found.members else None

    # ---- the head --------------------------------------------------------------

    def _choose(self) -> activation.Activation | None:
        """The activation memory this session should use, if any."""
        opts, identity = self.options, self.generator.identity
        if opts.kv_id:
            chosen = activation.get(self.store, opts.kv_id)
            if chosen.cube != opts.cube:
                raise UsageError(f"activation memory {chosen.id} belongs to cube {chosen.cube!r}, not {opts.cube!r}")
            return chosen
        found = activation.records(self.store, opts.cube)
        # A heat block holds the pinned units too (the scheduler builds it), so it goes first;
        # a query's block holds only what that query found.
        found.sort(key=lambda a: (a.selection.top is None, not a.selection.pinned, -a.created_at.timestamp()))
        matching = [a for a in found if a.matches(identity)]
        return (matching or found or [None])[0]

    def _prepare(self) -> Head:
        from memos_cli.models.kvcache import CacheError

        opts, gen = self.options, self.generator
        started = time.perf_counter()
        if not opts.recall:  # closed book: the instructions alone
            tokens = gen.tokenize(prompt.head_text([]), head=True)
            gen.prefill(tokens)
            self._live = [tokens]
            if opts.keep_head:
                self._state = gen.save_state()
            return Head("prefill", prompt.head_text([]), tokens, [], None, time.perf_counter() - started)
        chosen = self._choose()
        if chosen is not None:
            activation.assess(self.store, chosen, gen.identity)
            if chosen.status != "current" and opts.rebuild and opts.use_kv:
                self.notices.append(f"activation memory {chosen.id} is {chosen.status} ({chosen.reason}); rebuilding it")
                chosen = activation.build(self.store, gen, opts.cube, chosen.selection)
                started = time.perf_counter()  # the build is reported apart; the head is then a load
            if chosen.status == "current" and opts.use_kv:
                tokens = gen.tokenize(chosen.preamble, head=True)
                try:
                    kv = activation.load(self.store, chosen, gen, tokens)
                except CacheError as exc:
                    self.notices.append(f"cannot use activation memory {chosen.id}: {exc}; prefilling instead")
                else:
                    self._state, self._live = kv.state, [tokens]
                    return Head("kv", chosen.preamble, tokens, [s["id"] for s in chosen.sources], chosen.id,
                                time.perf_counter() - started, kv.read_seconds, kv.size)
            elif chosen.status != "current":
                self.notices.append(
                    f"activation memory {chosen.id} is not used: {chosen.status}, {chosen.reason}; prefilling instead"
                    + ("" if chosen.status == "other model" else " (`--rebuild` rebuilds it)"))
        selection = chosen.selection if chosen is not None else activation.Selection(pinned=True)
        if chosen is not None and chosen.status == "current":
            text, ids = chosen.preamble, [s["id"] for s in chosen.sources]
        else:
            units = activation.select_units(self.store, opts.cube, selection)
            text, ids = prompt.head_text(units), [u.id for u in units]
        tokens = gen.tokenize(text, head=True)
        activation.check_fits(len(tokens), gen.n_ctx)
        gen.prefill(tokens)
        self._live = [tokens]
        if opts.keep_head:
            self._state = gen.save_state()
        return Head("prefill", text, tokens, ids, chosen.id if chosen is not None else None, time.perf_counter() - started)

    def _evaluate(self, pieces: list[list[int]]) -> int:
        """Put ``pieces`` (the head, then whole exchanges of the conversation) in the context, each
        piece evaluated on its own, starting from the longest start of them that the context or a
        kept state already holds; keep the state after them for the next turn (interactive sessions).
        Returns how many of their tokens were not evaluated now.

        Evaluating piece by piece makes the KV values the same however many turns ago each piece
        was evaluated, so an answer does not depend on where its conversation was resumed from."""
        def shared(held: list[list[int]]) -> int:
            n = 0
            while n < min(len(held), len(pieces)) and held[n] == pieces[n]:
                n += 1
            return n

        gen, live, kept = self.generator, self._live, self._kept
        if live is not None and not gen.holds([t for p in live for t in p]):
            live = None  # another session on the same model (the server's, of another cube) used it since
        held = shared(live) if live is not None else 0
        if live is not None and held < len(live):
            held = 0  # the context holds more than a start of pieces, and cannot be cut back everywhere
        self._live = None  # until the pieces are all in: an interruption leaves the context unknown
        reused = held  # pieces not evaluated now
        if kept is not None and shared(kept[0]) == len(kept[0]) > held:
            reused = len(kept[0])
            gen.load_state(kept[1], [t for p in kept[0] for t in p])
        elif held == 0 and self._state is not None:
            reused = 1
            gen.load_state(self._state, self.head.tokens)
        elif held == 0:
            gen.prefill(self.head.tokens)
        start = max(reused, 1)
        for piece in pieces[start:]:
            gen.extend(piece)
        self._live = pieces
        if len(pieces) > start and self.options.keep_head:
            self._kept = (pieces, gen.save_state())
        return sum(len(p) for p in pieces[:reused])

    # ---- a turn ----------------------------------------------------------------------

    def _recall(self, question: str) -> list[MemoryUnit]:
        if not self.options.recall:
            return []
        skip = set(self.head.units)
        wanted = self.options.k or self.store.config.chat_k or DEFAULT_K
        floor = self.options.min_relevance
        if floor is None:
            floor = self.store.config.chat_min_relevance
        hits = self.store.recall(question, min(1000, wanted + len(skip) + 2 * len(self.turns)), self._filters,
                                 context=False, min_relevance=DEFAULT_MIN_RELEVANCE if floor is None else floor)
        out = [h.unit for h in hits
               if h.unit.id not in skip and (h.unit.meta or {}).get("session") != self.id]
        return out[:wanted]

    def _prompt(self, question: str, memories: list[MemoryUnit]) -> tuple[list[list[int]], list[int], list[MemoryUnit]]:
        """The prompt as the head and conversation's pieces and this turn's tokens, and the memories in it."""
        gen = self.generator
        budget = self.options.budget
        if budget is None:
            budget = DEFAULT_BUDGET if self.store.config.chat_budget is None else self.store.config.chat_budget
        block, used = prompt.recalled_block(memories, budget, gen.count)
        history = list(self.history)
        while True:  # the head's tokens are fixed; only what follows is rendered here
            pieces, rest = self._conversation(history)
            _, _, turn = gen.format.render_parts(self.head.text, block, history, question)
            tail = gen.tokenize(rest + turn)
            size = sum(len(p) for p in pieces) + len(tail)
            if size + min(self.options.max_tokens, 64) <= gen.n_ctx:
                return pieces, tail, used
            if history:
                history.pop(0)
            elif used:
                block, used = "", []
            else:
                raise UsageError(f"the question does not fit in the context of {gen.n_ctx} tokens (use --ctx)")

    def _conversation(self, history: list[tuple[str, str]]) -> tuple[list[list[int]], str]:
        """The head and the exchanges of ``history`` as token pieces, one an exchange (the first also
        holds what the template writes before it), and the text of the conversation left after them
        (what comes before the first exchange, when there is none yet). A template whose rendering
        of the earlier exchanges changes as the conversation grows gives no pieces: the whole
        conversation is then evaluated with the turn, as the first turn is."""
        exchanges = tuple((q, a) for q, a in history)
        texts = [self._rendered(exchanges[:n]) for n in range(len(exchanges) + 1)]
        if any(not later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False)):
            return [self.head.tokens], texts[-1]
        pieces = [self.head.tokens]
        for earlier, later in zip(texts, texts[1:], strict=False):
            start = len(earlier) if len(pieces) > 1 else 0
            pieces.append(self._tokens(later[start:]))
        return pieces, texts[-1] if len(texts) == 1 else ""

    def _rendered(self, history: tuple[tuple[str, str], ...]) -> str:
        """The conversation's text after these exchanges, remembered: each turn renders the same ones."""
        found = self._texts.get(history)
        if found is None:
            if len(self._texts) > 4096:
                self._texts.clear()
            found = self._texts[history] = self.generator.format.render_parts(self.head.text, "", list(history), "?")[1]
        return found

    def _tokens(self, text: str) -> list[int]:
        """Tokens of a piece of conversation, remembered: each turn tokenizes the same exchanges."""
        found = self._piece_tokens.get(text)
        if found is None:
            if len(self._piece_tokens) > 4096:
                self._piece_tokens.clear()
            found = self._piece_tokens[text] = self.generator.tokenize(text)
        return found

    def ready(self) -> None:
        """Evaluate the head and the conversation so far now, and keep their state: the part of the
        next turn that does not depend on its question, done while the user reads and types (an
        interactive session calls it between turns). Does nothing in a session that keeps no state,
        or when the conversation no longer fits the context (the next turn drops its oldest
        exchanges, and evaluates what is left itself)."""
        if not self.options.keep_head:
            return
        pieces, _ = self._conversation(list(self.history))
        if sum(len(p) for p in pieces) + 2 * min(self.options.max_tokens, 64) > self.generator.n_ctx:
            return
        self._evaluate(pieces)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to ``question``; afterwards ``self.last`` holds the turn.

        An interrupted turn (Ctrl-C, or the caller stops iterating) is neither
        saved nor added to the conversation.
        """
        question = question.strip()
        if not question:
            raise UsageError("the question is empty")
        turn = Turn(question)
        started = time.perf_counter()
        memories = self._recall(question)
        turn.timings["recall_s"] = time.perf_counter() - started
        if self.parametric is not None:
            routed = time.perf_counter()
            turn.parametric = self.parametric.route(question)  # adapters touch the last block only:
            turn.timings["route_s"] = time.perf_counter() - routed  # the head's KV state stays valid
        held, tail, turn.memories = self._prompt(question, memories)
        turn.cached_tokens = self._evaluate(held)
        tokens = [t for p in held for t in p] + tail
        turn.prompt_tokens = len(tokens)
        pieces: list[str] = []
        self._live = None  # from here the context holds this turn too
        gen_started = time.perf_counter()
        for piece in self.generator.stream(tokens, temperature=self.options.temperature, stop=STOP,
                                           max_tokens=self.options.max_tokens, seed=self.options.seed):
            if not pieces:
                turn.timings["first_token_s"] = time.perf_counter() - started
            pieces.append(piece)
            yield piece
        done = time.perf_counter()
        turn.answer = "".join(pieces).strip()
        turn.tokens = self.generator.count(turn.answer) if turn.answer else 0
        turn.timings["generation_s"] = done - gen_started
        turn.timings.setdefault("first_token_s", done - started)
        if self.options.save and turn.answer:
            turn.saved = self._save(turn)
            turn.timings["save_s"] = time.perf_counter() - done
        turn.timings["turn_s"] = time.perf_counter() - started
        self.history.append((question, turn.answer))
        self.turns.append(turn)
        self.last = turn

    def _save(self, turn: Turn) -> str | None:
        """The turn as an episode unit; its id, or None when the privacy policy refused it
        (``turn.unsaved`` and the store's notices then say why)."""
        from memos_cli.privacy.guard import PrivacyError

        try:
            return self._add_episode(turn)
        except PrivacyError as exc:
            turn.unsaved = f"{exc.finding}; this turn was not saved. {exc.hint}"
            self.store.notices.append(turn.unsaved)
            return None

    def _add_episode(self, turn: Turn) -> str:
        unit = self.store.add(
            f"User: {turn.question}\nAssistant: {turn.answer}",
            privacy=self.options.privacy,
            kind="episode",
            cube=self.options.cube,
            user=self.options.user,
            meta={"session": self.id, "turn": len(self.turns) + 1, "model": self.generator.identity.name,
                  "recalled": [u.id for u in turn.memories],
                  **({"parametric": used} if (used := [p["name"] for p in turn.parametric if p.get("applied")])
                     else {})},
        )
        return unit.id


def chat_settings(store: MemoryStore, model: str | None, n_ctx: int | None) -> tuple[str | None, int]:
    """The chat model (a GGUF path, or None for the default) and context size:
    the flags, else ``[chat]`` in memos.toml, else the defaults."""
    from memos_cli.models.generator import DEFAULT_CTX

    config = store.config if store.exists() else None
    spec = model or (config.chat_model if config else None)
    size = n_ctx or (config.chat_ctx if config else None) or DEFAULT_CTX
    return spec, size
