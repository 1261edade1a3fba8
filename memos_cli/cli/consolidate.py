"""``memos consolidate``: the scheduler, for cron."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from memos_cli.errors import MemosError, UsageError
from memos_cli.plaintext.units import iso, utcnow

from .app import app
from .common import open_existing_store, print_json, say_notices


@app.command()
def consolidate(
    ctx: typer.Context,
    cube: Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Only this cube (default: every cube).")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Show the plan; change nothing.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Read every unit, even where only what changed since "
                                       "the last run would be compared.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan and what was done as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing when nothing changed (for cron); "
                                        "skipped steps still go to stderr.")] = False,
    log: Annotated[Path | None, typer.Option("--log", metavar="FILE", help="Append one line about the run to FILE.",
                                             dir_okay=False)] = None,
) -> None:
    """Merge duplicates, close superseded facts, expire, summarise, promote: one commit per run
    (a big run: one per slice).

    What it does is set by the \\[consolidate.*] tables of memos.toml
    (memos config show). Safe to run from cron: the plan is made without
    the store's lock and applied in slices of about 0.4 s of lock each
    (other writers get in between), a second
    consolidate waits for the first, and a run with nothing to do changes
    nothing and makes no commit. A routine run compares only the memories
    changed since the last run with their nearest neighbours; the first run,
    a changed policy or --full reads everything.

    Exits 0 when every step ran, and 1 when one had to be skipped (a cache
    rebuild without its model, say): the others still ran and committed,
    and stderr names what was skipped.

    Examples:

      memos consolidate --dry-run

      memos consolidate --cube work --json

      memos consolidate --quiet --log ~/.memos-consolidate.log   (for cron)
    """
    from memos_cli.scheduler.run import consolidate as run
    from memos_cli.scheduler.run import log_line

    store = open_existing_store(ctx)
    if log is not None:
        _check_log(log)
    progress = None
    if not quiet and not json_out and sys.stderr.isatty():
        def progress(message: str) -> None:
            print(f"memos: {message}…", file=sys.stderr)
    try:
        report = run(store, cube=cube, dry_run=dry_run, full=full, progress=progress)
    except MemosError as exc:  # the log says a run failed too (cron's mail says why)
        if log is not None:
            _append(log, f"{iso(utcnow())} store={store.root} error: {exc}\n")
        raise
    say_notices(store)
    if log is not None:
        _append(log, log_line(report, str(store.root)))
    if json_out:
        print_json(report.to_json())
    elif not (quiet and not report.changed and not (dry_run and report.actions)):
        from .render import consolidate_view

        consolidate_view(report)
    for step in report.skipped:
        print(f"memos: skipped {step}", file=sys.stderr)
    if report.skipped:
        raise typer.Exit(1)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line)


def _check_log(path: Path) -> None:
    """A log file we can append to, checked before the run."""
    if path.is_dir():
        raise UsageError(f"--log {path} is a directory; give a file")
    if not path.parent.is_dir():
        raise UsageError(f"--log {path}: no such directory {path.parent}")
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write --log {path}: {exc.strerror}") from None
