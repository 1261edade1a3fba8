"""The ``memos`` Typer app: global options, and errors turned into one line."""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Annotated

import typer

from memos_cli.errors import MemosError

from .. import __version__

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
    no_server: Annotated[
        bool, typer.Option("--no-server", help="Work here even when `memos serve` runs for the store (by default "
                                               "recall, add and chat send it their request).")
    ] = False,
) -> None:
    obj = ctx.ensure_object(dict)
    obj["store_path"] = store
    obj["no_server"] = no_server


COMMAND_MODULES = ("write", "read", "chat", "change", "kv", "param", "steer", "learn", "history", "portable", "agents",
                   "maintain", "scan", "consolidate", "demo", "config", "completions")


def load_commands() -> None:
    """Import the modules that register commands (in this order in --help)."""
    for module in COMMAND_MODULES:
        importlib.import_module(f".{module}", __package__)


def _say_notes(exc: BaseException) -> None:
    """What happened after the error (a failed undo, say), each on a line after it."""
    for note in getattr(exc, "__notes__", []):
        print(f"memos: {note}", file=sys.stderr)


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """pandas is installed (the embedding model's package needs it), and pyarrow imports it as
    ``pyarrow.dataset`` loads: 0.5 s of the start of every command that reads the table, for a
    library memos never uses. In the CLI's process it is absent, as where it is not installed
    (pyarrow then does without it)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (memos runs without pandas)", name=name)
        return None


def main() -> None:
    """Console entry point: run the app; a ``MemosError`` becomes one line on stderr."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    # What memos writes is private (files 0600, directories 0700), as with ssh and gpg: the
    # store's own files get these modes anyway, but memory text also reaches files written
    # by others with the umask (git's checkout of unit files, LanceDB's data files written
    # from Rust, KV caches, the editor's temporary file). The user's umask can only add to it.
    os.umask(os.umask(0o077) | 0o077)
    load_commands()

    try:
        code = app(prog_name="memos", standalone_mode=False)
    except typer.TyperException as exc:  # bad flags and arguments, found by typer's parser
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer has printed the help already
            sys.exit(2)
        format_message = getattr(exc, "format_message", None)
        message = " ".join((format_message() if format_message else str(exc)).split())
        where = ctx.command_path if ctx else "memos"
        print(f"memos: error: {message} (see `{where} --help`)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except MemosError as exc:
        print(f"memos: error: {exc}", file=sys.stderr)
        _say_notes(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
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
        _say_notes(exc)
        sys.exit(70)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        print("memos: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
