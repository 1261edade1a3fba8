"""``memos param``: parametric memory, LoRA adapters and steering vectors kept in the store's history."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from memos_cli.errors import ModelError

from .app import app
from .common import confirm, open_existing_store, print_json, say_notices

param_app = typer.Typer(
    help=(
        "Parametric memory: LoRA adapters learned from memories (`memos learn`) and steering vectors "
        "(`memos steer`), versioned in the store's history like the memories themselves.\n\n"
        "Examples:\n\n"
        "  memos param list\n\n"
        "  memos param show prefs --json\n\n"
        "  memos param disable prefs && memos param scale prefs 0.5"
    ),
    no_args_is_help=True,
)
app.add_typer(param_app, name="param")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ModelO = Annotated[str | None, typer.Option("--model", metavar="GGUF",
                                            help="The chat model to check against (default: \\[chat] model in memos.toml, "
                                                 "else Gemma 3 270M).")]
NameA = Annotated[str, typer.Argument(metavar="NAME", help="A parametric memory's name.", show_default=False)]
NamesA = Annotated[list[str], typer.Argument(metavar="NAME...", help="Parametric memories' names.", show_default=False)]


def _model_sha(store: Any, model: str | None) -> str | None:
    """The chat model's sha256 (its digest is cached), for statuses. A model named with --model must
    be there; when the configured or default one cannot be found, statuses skip the model check."""
    from memos_cli.chat.session import chat_settings
    from memos_cli.models.generator import identify

    spec, size = chat_settings(store, model, None)
    try:
        return identify(spec, size).sha256
    except ModelError as exc:
        if model is not None:
            raise
        print(f"memos: {exc}; statuses do not say which memories are for another model", file=sys.stderr)
        return None


def _rows(store: Any, records: list[Any], model_sha: str | None) -> list[dict[str, Any]]:
    from memos_cli.store import params

    found = params.statuses(store, records, model_sha)
    return [{**r.to_json(), "bytes": params.blob_bytes(store, r), "status": state, "reason": reason}
            for r, (state, reason) in zip(records, found, strict=True)]


@param_app.command("list")
def list_(
    ctx: typer.Context,
    cube: Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Only this cube.")] = None,
    model: ModelO = None,
    json_out: JsonOpt = False,
) -> None:
    """List parametric memories by name, with whether chat can use them.

    Status: current; stale (a memory it was learned from was changed, forgotten
    or archived since: learn it again); other model (made for another model than
    the chat model). Only enabled ones are applied by default, each when its
    gate lets it.

    Examples:

      memos param list

      memos param list --cube work --json

      memos param list --model ~/models/other.gguf
    """
    from memos_cli.plaintext.units import check_name
    from memos_cli.store import params

    if cube is not None:
        check_name(cube, "cube")
    store = open_existing_store(ctx)
    records = params.records(store, cube)
    rows = _rows(store, records, _model_sha(store, model) if records else None)
    if json_out:
        print_json(rows)
        return
    from .render import param_table

    param_table(rows)


@param_app.command()
def show(ctx: typer.Context, name: NameA, model: ModelO = None, json_out: JsonOpt = False) -> None:
    """Show one parametric memory: every field of its record, its blob's size, its status and why.

    Examples:

      memos param show prefs

      memos param show prefs --json
    """
    from memos_cli.store import params

    store = open_existing_store(ctx)
    record = params.get(store, name)
    row = _rows(store, [record], _model_sha(store, model))[0]
    row["path"] = params.blob_path(record.blob)
    if json_out:
        print_json(row)
        return
    from .render import param_detail

    param_detail(row)


@param_app.command("rm")
def rm(
    ctx: typer.Context,
    names: NamesA,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove parametric memories, in one commit (their blobs too, when no other uses them).

    History keeps them: `memos rollback` brings them back. To remove a blob from
    history as well, purge the memories it was learned from (`memos purge`).

    Examples:

      memos param rm prefs

      memos param rm old-facts old-style --yes --json
    """
    from memos_cli.store import params

    store = open_existing_store(ctx)
    wanted = list(dict.fromkeys(params.check_param_name(n) for n in names))
    for n in wanted:
        if not (store.root / params.record_path(n)).is_file():
            params.get(store, n)  # says it is not there
    confirm(f"remove {len(wanted)} parametric memor{'y' if len(wanted) == 1 else 'ies'}", wanted, yes, required=False)
    gone = params.remove(store, wanted)
    say_notices(store)
    removed = [r.name for r in gone] + [n for n in wanted if n not in {r.name for r in gone}]
    if json_out:
        print_json({"removed": removed, "commit": store.repo.head()})
    else:
        print(f"removed {len(removed)} parametric memor{'y' if len(removed) == 1 else 'ies'}: {' '.join(removed)}")


def _toggle(ctx: typer.Context, names: list[str], enabled: bool, json_out: bool) -> None:
    from memos_cli.store import params

    store = open_existing_store(ctx)
    changed = params.set_enabled(store, names, enabled)
    say_notices(store)
    word = "enabled" if enabled else "disabled"
    if json_out:
        print_json({word: [r.name for r in changed], "commit": store.repo.head() if changed else None})
    elif changed:
        print(f"{word} {' '.join(r.name for r in changed)}")
    else:
        print(f"already {word}; nothing changed")


@param_app.command()
def enable(ctx: typer.Context, names: NamesA, json_out: JsonOpt = False) -> None:
    """Enable parametric memories: chat applies them by default (each to the questions its gate lets through).

    One commit; those already enabled are left as they are.

    Examples:

      memos param enable prefs

      memos param enable facts style --json
    """
    _toggle(ctx, names, True, json_out)


@param_app.command()
def disable(ctx: typer.Context, names: NamesA, json_out: JsonOpt = False) -> None:
    """Disable parametric memories: chat no longer applies them unless named with `memos chat --param`.

    One commit; those already disabled are left as they are.

    Examples:

      memos param disable prefs

      memos param disable facts style --json
    """
    _toggle(ctx, names, False, json_out)


@param_app.command(context_settings={"ignore_unknown_options": True})
def scale(
    ctx: typer.Context,
    name: NameA,
    value: Annotated[str, typer.Argument(metavar="VALUE", help="A number: the LoRA's scale, or the steering "
                                         "vector's strength (negative values steer the other way).",
                                         show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Set the default scale of a LoRA adapter, or the strength of a steering vector, in one commit.

    `memos chat --param NAME=SCALE` overrides it for one session.

    Examples:

      memos param scale prefs 0.5

      memos param scale cheerful -0.8 --json
    """
    from memos_cli.parametric.active import parse_number
    from memos_cli.store import params

    number = parse_number(value, "scale")
    store = open_existing_store(ctx)
    old = params.get(store, name)
    record = params.set_scale(store, old.name, number)
    say_notices(store)
    changed = record.scale != old.scale
    if json_out:
        print_json({"name": record.name, "old": old.scale, "scale": record.scale, "changed": changed,
                    "commit": store.repo.head() if changed else None})
    elif changed:
        print(f"{record.name}: scale {old.scale:g} -> {record.scale:g}")
    else:
        print(f"{record.name}: scale is {record.scale:g} already; nothing changed")
