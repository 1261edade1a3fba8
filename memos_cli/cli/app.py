"""The ``memos`` Typer app: global options, and errors turned into one line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import __version__
from ..core.errors import MemosError

app = typer.Typer(
    name="memos",
    help=(
        "A local-first memory for language models. Memory lives in one directory that is a git "
        "repository: every change is a commit.\n\n"
        "Examples:\n\n"
        "  memos add 'Alice moved to Lisbon in 2023' --kind fact --tag alice\n\n"
        "  memos recall 'where does Alice live?'\n\n"
        "  memos import notes.jsonl && memos stats"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"memos {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option("--store", "-s", help="Memory directory (default: $MEMOS_HOME, else ~/.memos).",
                     metavar="DIR"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.ensure_object(dict)["store_path"] = store


def main() -> None:
    """Console entry point: run the app; a ``MemosError`` becomes one line on stderr."""
    from . import completions, demo, read, write  # noqa: F401 - registers the commands (in this order in --help)

    try:
        app()
    except MemosError as exc:
        print(f"memos: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("memos: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if os.environ.get("MEMOS_DEBUG"):
            raise
        print(f"memos: internal error: {type(exc).__name__}: {exc} (MEMOS_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(70)
