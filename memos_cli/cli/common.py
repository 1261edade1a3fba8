"""What every command shares: the store option, errors, JSON and input helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import iter_json_lines  # noqa: F401 - the commands' JSON-lines reader
from memos_cli.portable.sources import read_input as read_source  # noqa: F401 - the commands' file arguments
from memos_cli.store.config import resolve_store_path


def open_store(ctx: typer.Context) -> Any:
    """The ``MemoryStore`` named by ``--store``/``$MEMOS_HOME``/``~/.memos``."""
    from memos_cli import lock
    from memos_cli.store.store import MemoryStore

    lock.command = ctx.command_path  # "memos config set": what the lock's holder is doing, for those who wait
    obj = ctx.ensure_object(dict)
    if "store" not in obj:
        obj["store"] = MemoryStore(resolve_store_path(obj.get("store_path")))
    return obj["store"]


def server_for(ctx: typer.Context) -> Any:
    """The store's running ``memos serve``, when there is one and ``--no-server`` was not given, else None."""
    if ctx.ensure_object(dict).get("no_server"):
        return None
    from memos_cli.agents.client import find  # standard library only; a lookup of one file when there is no server

    return find(resolve_store_path(ctx.obj.get("store_path")))


def open_existing_store(ctx: typer.Context) -> Any:
    """The store, which must exist already (reads and maintenance never create one).

    A missing or too-new store fails here, before any work; a write that was
    cut off is put right first, and the user told.
    """
    store = open_store(ctx)
    store.config  # noqa: B018
    store.recover()
    say_notices(store)
    return store


def say_notices(store: Any) -> None:
    """Tell the user what the store did on its own (a recovery, say)."""
    for notice in store.notices:
        print(f"memos: {notice}", file=sys.stderr)
    store.notices.clear()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def confirm(action: str, items: list[str], yes: bool, *, required: bool) -> None:
    """Ask before a bulk or irreversible change.

    On a terminal: show what it affects and ask. Elsewhere (scripts, cron):
    go on only with ``--yes`` when ``required``, else go on.
    """
    from memos_cli.errors import Cancelled

    if yes:
        return
    if not sys.stdin.isatty():
        if required:
            raise UsageError(f"refusing to {action} without --yes (there is no terminal to ask on)")
        return
    from .render import printable

    for text in items[:5]:
        line = " ".join(text.split())
        print(f"  {printable(line[:90])}{'…' if len(line) > 90 else ''}", file=sys.stderr)
    if len(items) > 5:
        print(f"  … and {len(items) - 5} more", file=sys.stderr)
    print(f"{action}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise Cancelled("cancelled; nothing changed")


@contextmanager
def progress_bar(show: bool, first: str = "loading the model") -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr (when ``show`` and stderr is a terminal), fed (phase, done, total)."""
    if not show or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(first, total=None)

        def update(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        yield update


PrivacyOpt = Annotated[list[str] | None, typer.Option(
    "--privacy", metavar="ACTION|KIND=ACTION",
    help="Override the \\[privacy] policy for this command: refuse, redact or allow, for every kind or for one "
         "(email=redact, secrets=allow); repeat for more. Recorded in the commit.")]

