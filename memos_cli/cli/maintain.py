"""Commands that look after the store: check, compact."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app
from .common import open_existing_store, print_json, say_notices

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command()
def check(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed (rebuilds the search table).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify the store: git, the unit files, the search table, embeddings and indexes.

    Exits 0 when all is well (or, with --repair, once all is fixed), 1 when
    problems remain. --repair never discards a committed or uncommitted change
    to the unit files: those are reported with what to do.

    Examples:

      memos check

      memos check --repair --json
    """
    from memos_cli.store.check import check as run_check

    store = open_existing_store(ctx)
    report = run_check(store, repair=repair)
    say_notices(store)
    if json_out:
        print_json(report.to_json())
    else:
        from .render import check_view

        check_view(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def compact(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Merge table fragments, refresh the text index and repack git history.

    Run it after many single adds, or from cron. Example: memos compact
    """
    from .render import human_bytes

    store = open_existing_store(ctx)
    sizes = store.compact()
    say_notices(store)
    if json_out:
        print_json(sizes)
    else:
        print(f"tables {human_bytes(sizes['tables_bytes_before'])} -> {human_bytes(sizes['tables_bytes_after'])}, "
              f".git {human_bytes(sizes['git_bytes_before'])} -> {human_bytes(sizes['git_bytes_after'])}")
