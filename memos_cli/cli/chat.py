"""``memos chat``: talk to a local model that remembers."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Annotated, Any

import typer

from memos_cli.errors import MemosError, UsageError
from memos_cli.privacy.policy import parse_override

from .app import app
from .common import PrivacyOpt, open_store, print_json, read_source, say_notices
from .read import KindF, SinceF, TagF, UntilF, _filters

HELP = """\
/memories   what this turn recalled, and the memory block in the head
/forget ID  forget a memory (it stays out of recall from now on)
/help       this list
/quit       leave (Ctrl-D does too); Ctrl-C stops an answer, which is then not saved"""


@app.command()
def chat(
    ctx: typer.Context,
    question: Annotated[list[str] | None, typer.Argument(
        help="Ask once and print only the answer; without it, reads stdin or starts a session.",
        metavar="QUESTION", show_default=False)] = None,
    cube: Annotated[str, typer.Option("--cube", metavar="CUBE", help="The cube to recall from and save to.")] = "default",
    user: Annotated[str | None, typer.Option("--user", metavar="USER", help="Saved turns' user (default: $MEMOS_USER).")] = None,
    kind: KindF = None, tag: TagF = None, since: SinceF = None, until: UntilF = None,
    k: Annotated[int | None, typer.Option("-k", metavar="N", min=1, max=100, help=(
        "Memories recalled per turn, at most (default: \\[chat] k in memos.toml, else 8)."))] = None,
    budget: Annotated[int | None, typer.Option("--budget", metavar="TOKENS", min=0, help=(
        "Tokens of recalled memories per turn, at most (default: \\[chat] budget in memos.toml, else 1024)."))] = None,
    min_relevance: Annotated[float | None, typer.Option(
        "--min-relevance", metavar="X", min=0.0, max=1.0,
        help="Recalled memories with a relevance below X stay out of the prompt (default: \\[chat] "
             "min_relevance in memos.toml, else 0.5).")] = None,
    model: Annotated[str | None, typer.Option("--model", metavar="GGUF",
                                              help="A GGUF chat model (default: \\[chat] model in memos.toml, "
                                                   "else Gemma 3 270M).")] = None,
    n_ctx: Annotated[int | None, typer.Option("--ctx", metavar="TOKENS",
                                              help="Context size (default: \\[chat] ctx, else 8192).", min=256)] = None,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", help="0 decodes greedily.",
                                               min=0.0, max=2.0)] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", metavar="N", help="Longest answer.", min=1)] = 256,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Sampling seed, for repeatable answers.")] = None,
    no_kv: Annotated[bool, typer.Option("--no-kv",
                                        help="Prefill the memory block instead of loading its saved KV cache.")] = False,
    kv: Annotated[str | None, typer.Option("--kv", metavar="ID",
                                           help="Use this activation memory (see `memos kv list`).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild a stale activation memory before using it.")] = False,
    no_save: Annotated[bool, typer.Option("--no-save", help="Keep nothing: turns are not saved as episodes.")] = False,
    no_recall: Annotated[bool, typer.Option("--no-recall", help="Closed book: no plaintext memory in the prompt "
                                                               "(no memory block, nothing recalled).")] = False,
    param: Annotated[list[str] | None, typer.Option("--param", metavar="NAME[=SCALE]",
                                                    help="Use this parametric memory (repeatable; a disabled one "
                                                         "too), at this scale; adapters are still routed.")] = None,
    no_param: Annotated[bool, typer.Option("--no-param", help="Use no parametric memory.")] = False,
    privacy: PrivacyOpt = None,
    batch: Annotated[str | None, typer.Option("--batch", metavar="FILE|-",
                                              help='Answer JSON lines {"q"} one JSON line each, loading the model '
                                                   "once; each question on its own.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the answer, memories used and timings as JSON.")] = False,
) -> None:
    """Chat with a local model that recalls your memories; each turn is saved as an episode.

    Each turn recalls the best memories of the cube, puts them in the prompt
    after the cube's memory block (its pinned memories, loaded from a saved
    KV cache when one is current: see `memos kv build`), answers, and saves the
    exchange as an `episode` unit (one commit per turn).

    Examples:

      memos chat

      memos chat "what does Alice drink?"

      echo "summarise what I know about Lisbon" | memos chat --json

      memos chat "when is the deadline?" --cube work --temperature 0 --no-save

      memos chat "what did we decide about the lease?" --min-relevance 0.8

      memos chat "what is my dog called?" --no-recall --param facts=0.8 --json

      memos chat --batch questions.jsonl --temperature 0 --no-save > answers.jsonl
    """
    from memos_cli.chat.session import ChatOptions
    from memos_cli.parametric.active import parse_param

    named: dict[str, float | None] = {}
    for spec in param or []:
        key, scale = parse_param(spec)
        named[key] = scale
    if batch is not None:
        if question:
            raise UsageError("--batch reads the questions from its file; give no QUESTION with it")
        lines = _batch_questions(batch)
    if question:
        text: str | None = " ".join(question)
        if not text.strip():
            raise UsageError("the question is empty")
    elif batch is not None:
        text = ""
    elif not sys.stdin.isatty():
        text = read_source("-", "question").strip()
        if not text:
            raise UsageError("nothing to ask: stdin is empty")
    else:
        text = None
        if json_out:
            raise UsageError("--json needs a question (as an argument or on stdin)")
    filters = _filters(kind, tag, None, None, since, until)
    options = ChatOptions(cube=cube, user=user, filters=filters, k=k, budget=budget, min_relevance=min_relevance,
                          temperature=temperature,
                          max_tokens=max_tokens, seed=seed, use_kv=not no_kv, kv_id=kv, rebuild=rebuild,
                          save=not no_save, keep_head=text is None or batch is not None, recall=not no_recall,
                          params=named, use_params=not no_param, privacy=parse_override(privacy))
    started = time.perf_counter()
    session, model_load_s = _start(ctx, options, model, n_ctx)
    if batch is not None:
        _answer_batch(session, lines)
        return
    if text is None:
        _interactive(session)
        return
    for piece in session.ask(text):
        if not json_out:
            sys.stdout.write(piece)
            sys.stdout.flush()
    turn = session.last
    assert turn is not None
    if not json_out:
        sys.stdout.write("\n")
    say_notices(session.store)  # a turn the privacy policy kept from being saved
    if not json_out:
        return
    timings = {"model_load_s": model_load_s, "head_s": session.head.seconds,
               "ttft_s": session.head.seconds + turn.timings["first_token_s"],
               "total_s": time.perf_counter() - started}
    print_json({
        "answer": turn.answer,
        "memories": [{"id": u.id, "text": u.text} for u in turn.memories],
        "parametric": turn.parametric,
        "session": session.id,
        "saved": turn.saved,
        **({"unsaved": turn.unsaved} if turn.unsaved else {}),
        "head": session.head.to_json(),
        "model": session.generator.identity.to_json(),
        "tokens": turn.tokens,
        "prompt_tokens": turn.prompt_tokens,
        "cached_tokens": turn.cached_tokens,
        "timings": {**{k: round(v, 4) for k, v in timings.items()}, **turn.to_json()["timings"]},
    })


def _batch_questions(source: str) -> list[str]:
    """The questions of a --batch file: JSON lines with "q" (or "question")."""
    from .common import iter_json_lines

    questions = []
    for n, item in iter_json_lines(read_source(source, "batch")):
        q = item.get("q", item.get("question")) if isinstance(item, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise UsageError(f'{source}:{n}: no question ("q")')
        questions.append(q.strip())
    if not questions:
        raise UsageError(f"{source} has no questions")
    return questions


def _answer_batch(session: Any, questions: list[str]) -> None:
    """One JSON line per question, each asked on its own (no conversation between them)."""
    import json

    for question in questions:
        session.history.clear()
        for _piece in session.ask(question):
            pass
        turn = session.last
        assert turn is not None
        out = {"q": question, **turn.to_json()}
        out.pop("question")
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        say_notices(session.store)


def _start(ctx: typer.Context, options: Any, model: str | None, n_ctx: int | None) -> tuple[Any, float]:
    """Load the model, open (or create) the store, and put the session's head in context.

    Returns the session and the seconds spent loading the models."""
    from memos_cli.chat.session import ChatSession, chat_settings

    from ..models.generator import load_generator

    started = time.perf_counter()
    store = open_store(ctx)
    spec, size = chat_settings(store, model, n_ctx)
    generator = load_generator(spec, n_ctx=size)
    if not store.exists():
        store.init()
    store.recover()
    # Loaded here, not in a background thread: llama-cpp-python points stdout and
    # stderr at /dev/null while it loads a model, which would swallow what this
    # thread prints meanwhile.
    store.embedder  # noqa: B018
    loaded = time.perf_counter()
    session = ChatSession(store, generator, options)
    say_notices(store)
    for notice in session.notices:
        print(f"memos: {notice}", file=sys.stderr)
    return session, loaded - started


def _interactive(session: Any) -> None:
    """A read-eval-print loop with line editing and history (readline)."""
    _setup_readline(session.store)
    head = session.head
    where = f"activation memory {head.activation}" if head.source == "kv" else "prefilled"
    print(f"memos chat: {session.generator.identity.name}, cube {session.options.cube}, "
          f"memory block of {len(head.units)} units ({len(head.tokens)} tokens, {where}). /help for commands.",
          file=sys.stderr)
    ahead = _Ahead(session)
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            if not line:
                continue
            _screen_history(session, line)
            if line.startswith("/"):
                if _command(session, line):
                    return
                continue
            try:
                ahead.wait()
                for piece in session.ask(line):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
            except KeyboardInterrupt:
                print("\n(interrupted: this turn is not saved)", file=sys.stderr)
            except MemosError as exc:
                print(f"memos: error: {exc}", file=sys.stderr)
            say_notices(session.store)
            ahead.start()
    finally:
        ahead.wait(interruptible=False)


class _Ahead:
    """The next turn's conversation evaluated on a thread while the user reads the answer and types
    (``ChatSession.ready``); ``wait`` before the model is used again. A failure there is left to
    the next turn, which evaluates what is missing itself."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memos-chat-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.session.ready()
        except Exception:  # noqa: BLE001 - see the class docstring
            pass

    def wait(self, interruptible: bool = True) -> None:
        """Until the thread is done; a Ctrl-C meanwhile is raised after it (the model is not shared)."""
        thread, interrupted = self._thread, False
        while thread is not None and thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                interrupted = True
        self._thread = None
        if interrupted and interruptible:
            raise KeyboardInterrupt


def _screen_history(session: Any, line: str) -> None:
    """What the privacy policy keeps out of memory stays out of the line history too: the line
    just typed is redacted there, or dropped when the policy refuses what it holds."""
    try:
        import readline
    except ImportError:
        return
    from memos_cli.privacy.guard import PrivacyError

    try:
        safe: str | None = session.store.guard(session.options.privacy).text(line)
    except PrivacyError:
        safe = None
    last = readline.get_current_history_length() - 1
    if safe == line or last < 0 or (readline.get_history_item(last + 1) or "").strip() != line:  # from 1 here
        return
    if safe is None:
        readline.remove_history_item(last)
    else:
        readline.replace_history_item(last, safe)


def _command(session: Any, line: str) -> bool:
    """Run a /command; True to leave."""
    name, _, arg = line.partition(" ")
    if name in ("/quit", "/exit", "/q"):
        return True
    if name == "/help":
        print(HELP, file=sys.stderr)
    elif name == "/memories":
        turn = session.last
        if turn is None:
            print("no turn yet", file=sys.stderr)
        else:
            from .render import printable  # memory text is data: no escape sequence reaches the terminal

            for unit in turn.memories:
                print(f"  {unit.id}  {printable(' '.join(unit.text.split())[:100])}", file=sys.stderr)
            if not turn.memories:
                print("  (nothing recalled was relevant enough, or fit the budget)", file=sys.stderr)
        print(f"memory block: {len(session.head.units)} units, {len(session.head.tokens)} tokens", file=sys.stderr)
    elif name == "/forget":
        if not arg.strip():
            print("usage: /forget ID", file=sys.stderr)
            return False
        try:
            gone = session.store.forget(arg.split())
        except MemosError as exc:
            print(f"memos: error: {exc}", file=sys.stderr)
            return False
        for unit in gone:
            kept = " (it stays in this session's memory block)" if unit.id in session.head.units else ""
            print(f"forgot {unit.id}{kept}", file=sys.stderr)
        if not gone:
            print("already forgotten", file=sys.stderr)
    else:
        print(f"unknown command {name}; /help lists them", file=sys.stderr)
    return False


def _setup_readline(store: Any) -> None:
    """Line editing, with the store's own line history (``.git/memos/chat_history``, private: what
    was typed may hold what a purge must remove, and `memos purge` clears it)."""
    try:
        import readline
    except ImportError:  # not on every platform; input() still works
        return
    import atexit

    from memos_cli.store.purge import chat_history_path, purge_mark

    path = chat_history_path(store)
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    mark = purge_mark(store)
    atexit.register(lambda: _save_history(readline, store, mark))


def _save_history(readline: Any, store: Any, mark: str) -> None:
    """Write the session's line history, unless a purge ran since the session began: its lines
    may hold what was purged. Under the store's lock, so that a purge comes wholly before or after."""
    from memos_cli.store.purge import chat_history_path, purge_mark

    path = chat_history_path(store)
    try:
        with store.locked():
            if purge_mark(store) != mark:
                print("memos: this session's line history was not saved: a purge ran meanwhile", file=sys.stderr)
                return
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            readline.write_history_file(str(path))
            os.chmod(path, 0o600)
    except (MemosError, OSError) as exc:
        print(f"memos: this session's line history was not saved: {exc}", file=sys.stderr)
