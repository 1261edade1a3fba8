"""``memos config``: show, get, set and unset the settings of ``memos.toml``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .app import app
from .common import open_existing_store, print_json, say_notices

config_app = typer.Typer(
    help=(
        "Show and change the store's settings (memos.toml).\n\n"
        "The models, the lock, recall, chat, the policy of memos consolidate and the privacy policy. A change is checked, "
        "then committed like any write.\n\n"
        "Examples:\n\n"
        "  memos config\n\n"
        "  memos config get consolidate.duplicates.similarity\n\n"
        "  memos config set consolidate.heat.activation_top 50\n\n"
        "  memos config unset consolidate.heat.activation_top"
    ),
    invoke_without_command=True,
)
app.add_typer(config_app, name="config")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="A dotted key: recall.k, consolidate.heat.activation_top.",
                                       show_default=False)]


@config_app.callback()
def config_main(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Without a subcommand: show every setting (as `memos config show`)."""
    if ctx.invoked_subcommand is None:
        _show(ctx, json_out)


@config_app.command()
def show(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show every setting: its value, and its default where it differs, by section.

    --json prints an object nested like the keys, each setting with its value,
    default, is_default, read_only and help
    (.consolidate.duplicates.similarity.value).

    Examples:

      memos config show

      memos config show --json | jq .consolidate.heat
    """
    _show(ctx, json_out)


def _show(ctx: typer.Context, json_out: bool) -> None:
    store = open_existing_store(ctx)
    settings = store.config.settings()
    if json_out:
        out: dict[str, Any] = {}
        for s in settings:
            *path, name = s.key.split(".")
            table = out
            for part in path:
                table = table.setdefault(part, {})
            table[name] = {k: v for k, v in s.to_json().items() if k != "key"}
        print_json(out)
        return
    from rich.markup import escape
    from rich.table import Table

    from memos_cli.store.policy import toml_literal

    from .render import console

    table = Table(header_style="bold", caption=str(store.config_path), caption_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("default", overflow="fold")
    for i, s in enumerate(settings):
        last = i + 1 == len(settings) or settings[i + 1].section != s.section
        value = escape(toml_literal(s.value))
        if s.read_only:
            default = "(read-only)"
        elif s.is_default:
            default = "(default)"
        else:  # what was changed stands out
            value, default = f"[bold]{value}[/bold]", escape(toml_literal(s.default))
        table.add_row(s.key, value, default, end_section=last)
    console.print(table, highlight=False)


@config_app.command()
def get(ctx: typer.Context, key: KeyArg, json_out: JsonOpt = False) -> None:
    """Print one setting's value (a string as it is, anything else as TOML; nothing when unset).

    Examples:

      memos config get recall.k

      memos config get consolidate.superseded.kinds --json
    """
    store = open_existing_store(ctx)
    setting = store.config.get(key)
    if json_out:
        print_json(setting.to_json())
    else:
        from .render import printable

        print(printable(_plain(setting.value)))


# ignore_unknown_options: VALUE may be a negative number (-1), which click would take for an option.
@config_app.command("set", context_settings={"ignore_unknown_options": True})
def set_(
    ctx: typer.Context,
    key: KeyArg,
    value: Annotated[str, typer.Argument(metavar="VALUE", show_default=False,
                                         help='A TOML value (0.9, true, ["fact", "note"], "text"), else the text as it is.')],
    json_out: JsonOpt = False,
) -> None:
    """Set a setting in memos.toml, in one commit (op config).

    VALUE is read as TOML when it is valid TOML (numbers, true/false, arrays,
    quoted strings), else as a bare string. The whole config is checked
    first: an unknown key, a bad value or a read-only one changes nothing.
    Setting the value it already has makes no commit. A negative number
    needs no -- (memos config set KEY -1).

    Examples:

      memos config set consolidate.duplicates.similarity 0.9

      memos config set consolidate.superseded.kinds '["fact", "note"]'

      memos config set chat.model ~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf
    """
    _change(ctx, key, _parse_value(value), unset=False, json_out=json_out)


@config_app.command()
def unset(ctx: typer.Context, key: KeyArg, json_out: JsonOpt = False) -> None:
    """Put a setting back to its default (removed from memos.toml), in one commit.

    Examples:

      memos config unset consolidate.duplicates.similarity

      memos config unset chat.model --json
    """
    _change(ctx, key, None, unset=True, json_out=json_out)


def _change(ctx: typer.Context, key: str, value: Any, *, unset: bool, json_out: bool) -> None:
    from memos_cli.store.policy import toml_literal

    store = open_existing_store(ctx)
    result = store.set_config(key, value, unset=unset)
    say_notices(store)
    if json_out:
        print_json(result | {"old": _jsonable(result["old"]), "value": _jsonable(result["value"]),
                             "default": _jsonable(result["default"])})
        return
    new, old = toml_literal(result["value"]), toml_literal(result["old"])
    if not result["changed"]:
        what = f"at its default {new}" if unset else new
        print(f"{key} is already {what}; nothing changed")
    elif unset:
        print(f"{key} is back to its default {new} (was {old}); commit {result['commit'][:10]}")
    else:
        print(f"{key} = {new} (was {old}); commit {result['commit'][:10]}")


def _parse_value(raw: str) -> Any:
    """VALUE as a TOML value when it is one (a single one), else the text itself."""
    import tomllib

    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return parsed["value"] if len(parsed) == 1 else raw


def _plain(value: Any) -> str:
    from memos_cli.store.policy import toml_literal

    if value is None:
        return ""
    return value if isinstance(value, str) else toml_literal(value)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
