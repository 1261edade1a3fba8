"""``memos scan``: find secrets and personal data already stored."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .app import app
from .common import open_existing_store, print_json, progress_bar


@app.command()
def scan(
    ctx: typer.Context,
    history: Annotated[bool, typer.Option("--history", help="Also every older version in git history.")] = False,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", "-k", metavar="KIND",
        help="Look for this kind or group (secrets, personal); repeat for more. Default: every kind the "
             "\\[privacy] policy does not allow.")] = None,
    all_kinds: Annotated[bool, typer.Option("--all-kinds", help="Look for every kind, allowed or not.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Find secrets and personal data already in the store; exit 1 when there are any.

    Looks at every memory, at the activation memories (KV caches) and
    parametric memories built from them, and at `memos chat`'s line history;
    with --history, at every version in git history too. Each finding is
    named by memory id, version and kind, never by the text itself, and the
    `memos purge` command that removes them all is printed. Exit 0: nothing
    found; 1: findings (for cron and CI).

    Examples:

      memos scan

      memos scan --history --json

      memos scan --kind email --kind phone
    """
    from memos_cli.privacy.kinds import NAMES
    from memos_cli.privacy.policy import expand
    from memos_cli.privacy.scan import scan as run_scan

    store = open_existing_store(ctx)
    if all_kinds:
        kinds = NAMES
    elif kind:
        kinds = expand(kind, "--kind")
    else:
        kinds = store.config.privacy.guarded()

    with progress_bar(not json_out, "scanning units") as progress:
        report = run_scan(store, kinds, history=history, progress=progress)
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    if report.findings:
        raise typer.Exit(1)


def _render(report: object) -> None:
    from memos_cli.privacy.scan import ScanReport

    assert isinstance(report, ScanReport)
    scanned = report.scanned
    what = [f"{scanned.get('units', 0):,} memories"]
    if "versions" in scanned:
        what.append(f"{scanned['versions']:,} versions in history")
    what += [f"{scanned.get('caches', 0)} activation memories", f"{scanned.get('params', 0)} parametric memories"]
    if "chat_lines" in scanned:
        what.append(f"{scanned['chat_lines']} lines of chat history")
    summary = f"scanned {', '.join(what)} in {report.seconds:.1f}s, for {len(report.kinds)} kinds"
    if not report.findings:
        print(f"nothing found ({summary})")
        return
    for f in report.findings:
        if f.where == "chat-history":
            print(f"chat-history  line {f.line}  {f.kind}")
            continue
        label = {"unit": "memory", "history": "history", "kv": f"kv {f.cache}", "param": f"param {f.param}"}[f.where]
        built = "" if f.where in ("unit", "history") else "  (built from it)"
        times = f" x{f.count}" if f.count > 1 else ""
        print(f"{label:<8}  {f.unit}  v{f.version}  {f.field:<4}  {f.kind}{times}{built}")
    print(f"{len(report.findings)} finding{'s' if len(report.findings) != 1 else ''}; {summary}", file=sys.stderr)
    commands = report.commands()
    if commands:
        print("to remove them from the store, its caches and adapters, and all of history:", file=sys.stderr)
        for command in commands:
            print(f"  {command}", file=sys.stderr)
