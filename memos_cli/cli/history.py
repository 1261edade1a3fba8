"""Commands on the store's history: log, diff, rollback."""

from __future__ import annotations

from typing import Annotated

import typer

from memos_cli.errors import UsageError

from .app import app
from .common import confirm, open_existing_store, print_json, say_notices

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command()
def log(
    ctx: typer.Context,
    n: Annotated[int | None, typer.Option("-n", metavar="N", help="At most N operations.", min=1)] = None,
    cube: Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Only operations on this cube.")] = None,
    user: Annotated[str | None, typer.Option("--user", metavar="USER", help="Only this user's operations.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The operations on memory, newest first: who, when, what and how many units.

    Examples:

      memos log -n 10

      memos log --user alice --json
    """
    from memos_cli.plaintext.units import check_name
    from memos_cli.store import history

    for value, what in ((cube, "cube"), (user, "user")):
        if value is not None:
            check_name(value, what)
    store = open_existing_store(ctx)
    commits = history.log(store, n, cube, user)
    if json_out:
        print_json([c.to_json() for c in commits])
    else:
        from .render import log_table

        log_table(commits)


@app.command()
def diff(
    ctx: typer.Context,
    revs: Annotated[list[str] | None, typer.Argument(help="Nothing: the last commit. REV: from REV to now. "
                                                     "REV REV: between the two.", metavar="[REV [REV]]",
                                                     show_default=False)] = None,
    usage: Annotated[bool, typer.Option("--usage", help="Also list units whose access counts alone changed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """What changed in memory: units added, removed and changed, with a diff of their text and fields.

    REV is anything git understands: a commit id from `memos log`, HEAD~3.

    Examples:

      memos diff

      memos diff HEAD~5

      memos diff 3f2a1c9d 8e7b6a5f --json
    """
    from memos_cli.store import history

    revs = revs or []
    if len(revs) > 2:
        raise UsageError("give at most two revisions")
    store = open_existing_store(ctx)
    result = history.diff(store, *revs)
    if json_out:
        print_json(result.to_json())
    else:
        from .render import diff_view

        diff_view(result, usage)


@app.command()
def rollback(
    ctx: typer.Context,
    rev: Annotated[str, typer.Argument(help="The commit to go back to (see `memos log`).", metavar="REV")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Put memory back as it was at REV, as a new commit; history is kept, so it can be undone.

    Asks for confirmation on a terminal.

    Examples:

      memos rollback HEAD~1

      memos rollback 3f2a1c9d --yes
    """
    from memos_cli.store import history

    store = open_existing_store(ctx)
    target = store.repo.resolve(rev)
    change = history.diff(store, target, "HEAD")  # from the target to now: what the rollback undoes
    affected = [c for c in change.changes if not c.usage_only]
    if not change.changes and not change.params:
        raise UsageError(f"memory is already as it was at {target[:10]}; nothing to roll back")
    summary = (f"roll back to {target[:10]}: {change.count('added')} units removed, {change.count('removed')} restored, "
               f"{change.count('changed')} changed back")
    if change.params:
        summary += f", {len(change.params)} parametric memor{'y' if len(change.params) == 1 else 'ies'}"
    confirm(summary, [(c.new or c.old).text for c in affected if (c.new or c.old)]
            + [f"parametric memory {p.name}" for p in change.params], yes, required=False)
    result = store.rollback(target)
    say_notices(store)
    if json_out:
        print_json(result)
    else:
        print(f"rolled back to {target[:10]} in commit {(result['commit'] or '')[:10]}: "
              f"{len(result['restored'])} units restored, {len(result['removed'])} removed"
              + (f", parametric memories {' '.join(result['params'])}" if result.get("params") else ""))
