"""``memos demo``: the whole loop on a scratch store, with the default models."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import app

DEMO_MEMORIES = [
    ("Alice moved to Lisbon in March 2023 and works as a marine biologist.", "fact", ["alice"], "2023-03-14"),
    ("Alice prefers green tea to coffee, and never drinks anything after 6 pm.", "preference", ["alice"], "2023-06-02"),
    ("Bob is training for the Berlin marathon in September.", "fact", ["bob"], "2024-05-20"),
    ("Team standup moved to 10:00 on Tuesdays and Thursdays.", "note", ["work"], "2024-09-01"),
    ("Dinner with Alice and Bob at the Thai place on Rua Augusta; Bob brought his new dog, Pixel.",
     "episode", ["alice", "bob"], "2024-10-11"),
]
DEMO_QUERIES = ["What does Alice like to drink?", "Where does Alice live?", "Who has a dog?"]


@app.command()
def demo(
    keep: Annotated[str | None, typer.Option("--keep", metavar="DIR",
                    help="Build the demo store here and keep it (default: a temporary directory).")] = None,
) -> None:
    """Run the main loop on a scratch store: add, recall, edit, diff, roll back, pin, chat.

    It never touches your own store (--store is ignored): the demo store is
    temporary unless --keep names a directory. Uses the embedded default
    models; nothing is downloaded. Example: memos demo --keep /tmp/memos-demo
    """
    from rich.console import Console

    from memos_cli.plaintext.retrieval import Filters
    from memos_cli.store import history
    from memos_cli.store.store import MemoryStore

    from .render import diff_view, hits_table, units_table

    console = Console()
    with tempfile.TemporaryDirectory(prefix="memos-demo-") as tmp:
        root = Path(keep) if keep else Path(tmp) / "store"
        store = MemoryStore(root)
        store.init()
        console.rule(f"[bold]memos demo[/bold]: a scratch store at {root}")
        for text, kind, tags, when in DEMO_MEMORIES:
            unit = store.add(text, kind=kind, tags=tags, time=when, user="demo")
            console.print(f"[green]memos add[/green] --kind {kind} --tag {','.join(tags)} --time {when}", highlight=False)
            console.print(f"  {text}", markup=False, highlight=False)
            console.print(f"  [dim]->[/dim] {unit.id}", highlight=False)
        console.print()
        units_table(store.list(Filters(), limit=0), title="memos list")
        for query in DEMO_QUERIES:
            console.rule(f"memos recall {query!r} -k 3")
            hits_table(store.recall(query, 3), query)
        moved = next(u for u in store.list(Filters(tags=["alice"], kind="fact"), limit=1))
        console.rule(f"memos edit {moved.id} --text ...")
        store.edit(moved.id, {"text": "Alice moved to Porto in January 2025; she still works as a marine biologist."})
        diff_view(history.diff(store))
        console.rule("memos recall 'Where does Alice live?' -k 1")
        hits_table(store.recall("Where does Alice live?", 1), "Where does Alice live?")
        console.rule("memos rollback HEAD~1 (a new commit; the edit stays in history)")
        store.rollback("HEAD~1")
        hits_table(store.recall("Where does Alice live?", 1), "Where does Alice live?")
        _privacy(console, store)
        _chat(console, store)
        _consolidate(console, store)
        console.rule("memos log (one commit per change)")
        for commit in history.log(store, 20):
            console.print(f"[yellow]{commit.sha[:10]}[/yellow] {commit.when:%Y-%m-%d %H:%M} {commit.subject}")
        if keep:
            console.print(f"\nThe store is kept at {root}: try `memos --store {root} recall 'marathon'`.")


def _privacy(console: Any, store: Any) -> None:
    """A secret refused, then stored redacted; `memos scan` finds nothing left."""
    from memos_cli.errors import MemosError
    from memos_cli.privacy.kinds import NAMES
    from memos_cli.privacy.scan import scan

    text = "The staging deploy uses the AWS key AKIAIOSFODNN7EXAMPLE until May."
    console.rule("memos add (a secret: refused by the default \\[privacy] policy, nothing written)")
    try:
        store.add(text, user="demo")
    except MemosError as exc:
        console.print(f"memos: error: {exc}", style="red", markup=False, highlight=False)
    console.rule("memos add ... --privacy redact")
    unit = store.add(text, user="demo", privacy={"*": "redact"})
    console.print(f"{unit.id}: {unit.text}", markup=False, highlight=False)
    report = scan(store, NAMES)
    console.print(f"memos scan --all-kinds: {len(report.findings)} findings in {report.scanned['units']} memories",
                  highlight=False)


def _chat(console: Any, store: Any) -> None:
    """Pin a memory, save its activation memory, and chat with and without it."""
    from memos_cli import activation
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.plaintext.retrieval import Filters

    from ..models.generator import load_generator

    tea = next(u for u in store.list(Filters(kind="preference"), limit=1))
    console.rule(f"memos pin {tea.id} && memos kv build --pinned")
    store.pin([tea.id])
    with load_generator(None) as generator:
        record = activation.build(store, generator, "default", activation.Selection(pinned=True))
        console.print(f"activation memory {record.id}: {record.n_tokens} tokens, {record.bytes / 1e6:.1f} MB, "
                      f"built in {record.build_seconds:.2f}s (kept out of git)", highlight=False)
        # The same question with the cache and without it (greedy: the same answer), then a saved turn.
        for question, use_kv, save in (("What does Alice like to drink?", True, False),
                                       ("What does Alice like to drink?", False, False),
                                       ("Who is training for a marathon?", True, True)):
            flags = ("" if use_kv else " --no-kv") + ("" if save else " --no-save")
            console.rule(f"memos chat {question!r} --temperature 0{flags}")
            options = ChatOptions(user="demo", temperature=0.0, max_tokens=48, use_kv=use_kv, save=save)
            session = ChatSession(store, generator, options)
            for piece in session.ask(question):
                console.print(piece, end="", markup=False, highlight=False)
            turn = session.last
            how = "loaded from its KV cache" if session.head.source == "kv" else "prefilled"
            saved = f"saved as episode {turn.saved}" if turn.saved else "not saved"
            console.print(f"\n[dim]memory block {how} in {session.head.seconds * 1000:.0f} ms; first token after "
                          f"{(session.head.seconds + turn.timings['first_token_s']) * 1000:.0f} ms; {saved}[/dim]",
                          highlight=False)


def _consolidate(console: Any, store: Any) -> None:
    """A repeated preference and a changed address, then the scheduler's run."""
    from memos_cli.scheduler.run import consolidate

    from .render import consolidate_view, hits_table

    console.rule("memos add (a repeat, and a fact that changed), then memos consolidate")
    for text, kind, when in (("alice prefers green tea to coffee, and never drinks anything after 6 pm",
                              "preference", "2024-11-02"),
                             ("My home address is 12 Oak Street, Leeds.", "fact", "2023-01-10"),
                             ("My home address is 4 Elm Road, York.", "fact", "2025-06-01")):
        unit = store.add(text, kind=kind, time=when, user="demo")
        console.print(f"[green]memos add[/green] --kind {kind} --time {when} {text!r} [dim]->[/dim] {unit.id}",
                      highlight=False)
    consolidate_view(consolidate(store))
    console.rule("memos recall 'What is my home address?' -k 2 (the current fact first)")
    hits_table(store.recall("What is my home address?", 2, context=False), "What is my home address?")
