"""``memos kv``: activation memory, blocks of memory saved as KV caches."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .app import app
from .common import confirm, open_existing_store, print_json

kv_app = typer.Typer(
    help=(
        "Activation memory: a block of memory prefilled on the chat model, its KV cache saved, "
        "so a chat starts without reading it again.\n\n"
        "Examples:\n\n"
        "  memos pin ID && memos kv build --pinned\n\n"
        "  memos kv list\n\n"
        "  memos kv show ID --text"
    ),
    no_args_is_help=True,
)
app.add_typer(kv_app, name="kv")

CubeO = Annotated[str, typer.Option("--cube", metavar="CUBE", help="The cube.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ModelO = Annotated[str | None, typer.Option("--model", metavar="GGUF",
                                            help="The chat model (default: \\[chat] model in memos.toml, else Gemma 3 270M).")]
CtxO = Annotated[int | None, typer.Option("--ctx", metavar="TOKENS", help="Context size (default: \\[chat] ctx, else 8192).",
                                          min=256)]


def _identity(store: Any, model: str | None, n_ctx: int | None) -> Any:
    """The configured chat model's identity, without loading it (for statuses)."""
    from memos_cli.chat.session import chat_settings

    from ..models.generator import identify

    spec, size = chat_settings(store, model, n_ctx)
    return identify(spec, size)


@kv_app.command()
def build(
    ctx: typer.Context,
    pinned: Annotated[bool, typer.Option("--pinned", help="The cube's pinned memories (the default).")] = False,
    top: Annotated[int | None, typer.Option("--top", metavar="N", help="The pinned memories and the N hottest "
                                            "others (access, recency, importance; \\[consolidate.heat]).",
                                            min=1, max=10_000)] = None,
    query: Annotated[str | None, typer.Option("--query", metavar="TEXT", help="The memories recalled for TEXT.")] = None,
    k: Annotated[int, typer.Option("-k", metavar="N", help="How many memories --query recalls.", min=1, max=1000)] = 10,
    cube: CubeO = "default",
    model: ModelO = None,
    n_ctx: CtxO = None,
    json_out: JsonOpt = False,
) -> None:
    """Prefill a block of memory and save its KV cache (replacing the cube's previous one for that block and model).

    Makes no commit: caches are derived data, kept in tables/kv/ out of git.

    Examples:

      memos kv build --pinned

      memos kv build --top 50 --cube work

      memos kv build --query "Alice" -k 20 --json
    """
    from memos_cli import activation
    from memos_cli.chat.session import chat_settings

    from ..models.generator import load_generator

    selection = activation.Selection(pinned=pinned or (top is None and query is None), top=top,
                                     query=query, k=k)
    store = open_existing_store(ctx)
    spec, size = chat_settings(store, model, n_ctx)
    with load_generator(spec, n_ctx=size) as generator:
        record = activation.build(store, generator, cube, selection)
    if json_out:
        print_json(record.to_json())
        return
    print(f"{record.id}: {len(record.sources)} units, {record.n_tokens} tokens, {record.bytes / 1e6:.1f} MB, "
          f"built in {record.build_seconds:.2f}s" + (f" (replaced {', '.join(record.extra['replaced'])})"
                                                     if record.extra.get("replaced") else ""))


@kv_app.command("list")
def list_(
    ctx: typer.Context,
    cube: Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Only this cube.")] = None,
    model: ModelO = None,
    n_ctx: CtxO = None,
    json_out: JsonOpt = False,
) -> None:
    """List activation memories, newest first, with whether chat can use them.

    Status: current (chat loads it), stale (a unit changed since), missing (no
    file), or other model (built for another model or context size than chat's).

    Examples:

      memos kv list

      memos kv list --cube work --json
    """
    from memos_cli import activation

    store = open_existing_store(ctx)
    identity = _identity(store, model, n_ctx)
    found = [activation.assess(store, a, identity) for a in activation.records(store, cube)]
    if json_out:
        print_json([a.to_json() for a in found])
        return
    from .render import kv_table

    kv_table(found)


@kv_app.command()
def show(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="ID", help="An activation memory's id (or a unique prefix).")],
    text: Annotated[bool, typer.Option("--text", help="Also print the memory block as the model reads it.")] = False,
    model: ModelO = None,
    n_ctx: CtxO = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one activation memory: its model, units, size and status.

    Examples:

      memos kv show 01hx

      memos kv show 01hx --text --json
    """
    from memos_cli import activation

    store = open_existing_store(ctx)
    record = activation.assess(store, activation.get(store, ident), _identity(store, model, n_ctx))
    if json_out:
        print_json(record.to_json(with_preamble=text))
        return
    from .render import kv_detail

    kv_detail(record, text)


@kv_app.command("rm")
def rm(
    ctx: typer.Context,
    idents: Annotated[list[str], typer.Argument(metavar="ID...", help="Activation memories to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove activation memories and their cache files (the units are not touched).

    Example: memos kv rm 01hx
    """
    from memos_cli import activation

    store = open_existing_store(ctx)
    found = {a.id: a for a in (activation.get(store, i) for i in idents)}
    confirm(f"remove {len(found)} activation memories", [f"{a.id} {a.cube} {a.selection.describe()}"
                                                         for a in found.values()], yes, required=False)
    gone = activation.remove(store, list(found))
    if json_out:
        print_json({"removed": [a.id for a in gone]})
    else:
        print(f"removed {len(gone)} activation memor{'y' if len(gone) == 1 else 'ies'}")
