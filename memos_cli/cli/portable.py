"""Commands that move memory: export, remote, sync, clone, conflicts (``memos import`` is with the writes)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from .app import app
from .common import open_existing_store, print_json, progress_bar, say_notices
from .read import CubeF, JsonOpt, KindF, PinnedF, SinceF, Status, TagF, UntilF, UserF, _filters


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    markdown = "markdown"
    pack = "pack"


@app.command()
def export(
    ctx: typer.Context,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="jsonl (one unit a line), markdown (a folder of "
                                              "files with front matter) or pack (one file: units, vectors, parametric "
                                              "memory).")] = ExportFormat.jsonl,
    output: Annotated[str | None, typer.Option("--output", "-o", metavar="PATH",
                                               help="Where to write (jsonl: default stdout; markdown: a new or empty "
                                                    "folder; pack: a file).")] = None,
    kind: KindF = None, tag: TagF = None, cube: CubeF = None, user: UserF = None,
    since: SinceF = None, until: UntilF = None, pinned: PinnedF = None,
    status: Annotated[Status, typer.Option("--status", help="Which lifecycle state (default: all, forgotten "
                                                             "and archived units too).")] = Status.all,
    vectors: Annotated[bool | None, typer.Option("--vectors/--no-vectors", show_default=False,
                                                 help="Include the embeddings (default: in a pack only), so an "
                                                      "import into a store of the same model embeds nothing.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write memory out, to keep, to read, or to move into another store.

    Every field of every unit is written (ids, times, versions, tags, meta,
    sources, pins), so `memos import` brings them back as they were; the
    filters are recall's. Nothing in the store changes.

    Examples:

      memos export > memory.jsonl

      memos export --format markdown -o notes/ --cube work

      memos export --format pack -o work.pack --cube work

      memos export --kind fact --since "30d ago" --status active
    """
    from memos_cli.portable.export import export as run

    if json_out and fmt is ExportFormat.jsonl and output in (None, "-"):
        raise typer.BadParameter("--json prints a summary: give the export a file with -o")
    filters = _filters(kind, tag, cube, user, since, until, None if status is Status.all else status.value, pinned)
    store = open_existing_store(ctx)
    with progress_bar(not json_out and output not in (None, "-"), "reading") as bar:
        result = run(store, filters, fmt.value, output, vectors=vectors, cube=cube, progress=bar)
    say_notices(store)
    if json_out:
        print_json(result)
    elif result["path"] != "-":
        extra = f", {result['params']} parametric memories" if result.get("params") else ""
        print(f"exported {result['units']} units{extra} to {result['path']} ({result['bytes']:,} bytes, "
              f"{result['seconds']:.1f}s)", file=sys.stderr)


remote_app = typer.Typer(
    help="The remotes a store syncs with: any git remote (a bare repository in a folder, ssh, a git host).\n\n"
         "Examples:\n\n  memos remote add origin ssh://me@box/srv/memory.git\n\n  memos remote add usb /media/usb/memory.git"
         "\n\n  memos remote list",
    no_args_is_help=True,
)
app.add_typer(remote_app, name="remote")


@remote_app.command("add")
def remote_add(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")],
               url: Annotated[str, typer.Argument(metavar="URL", help="A git URL or a folder.")],
               json_out: JsonOpt = False) -> None:
    """Name a remote to sync with (kept in the store's git config, not in history; nothing is contacted).

    To start a remote on a disk or server: git init --bare /path/memory.git,
    then memos remote add NAME /path/memory.git and memos sync.
    """
    from memos_cli.portable.sync import add_remote

    store = open_existing_store(ctx)
    found = add_remote(store, name, url)
    if json_out:
        print_json(found.to_json())
    else:
        print(f"added remote {found.name} ({found.shown}); `memos sync {found.name}` to sync with it")


@remote_app.command("list")
def remote_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the remotes."""
    from memos_cli.portable.sync import remotes

    store = open_existing_store(ctx)
    found = remotes(store)
    if json_out:
        print_json([r.to_json() for r in found])
    elif not found:
        print("no remotes; add one with `memos remote add NAME URL`", file=sys.stderr)
    else:
        from .render import printable as safe

        for r in found:
            print(f"{safe(r.name)}\t{safe(r.shown)}")


@remote_app.command("remove")
def remote_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")],
                  json_out: JsonOpt = False) -> None:
    """Forget a remote (the remote itself is not touched)."""
    from memos_cli.portable.sync import remove_remote

    store = open_existing_store(ctx)
    found = remove_remote(store, name)
    if json_out:
        print_json(found.to_json())
    else:
        print(f"removed remote {found.name}")


@app.command()
def sync(
    ctx: typer.Context,
    remote: Annotated[str | None, typer.Argument(metavar="REMOTE", help="Which remote (default: the only one, "
                                                                          "or origin).")] = None,
    purge_remote: Annotated[bool, typer.Option("--purge-remote", help="When the remote still holds units purged "
                                               "here, remove them from its history too (rewrites it, pushes with "
                                               "--force-with-lease).")] = False,
    no_push: Annotated[bool, typer.Option("--no-push", help="Fetch and merge only.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fetch the remote's memory, merge it with this store's, and push the result.

    The merge is by memory, not by line: units changed on one side are
    taken; a unit changed on both is merged field by field (tags united,
    meta keys merged, access counts summed); when both changed the same
    field, the later change wins and the other stays in history, listed as a
    conflict (`memos conflicts`). A unit forgotten on one side and edited on
    the other stays forgotten, with the edit merged in. Purges travel: a
    purge made on the other side is applied here, and a remote still holding
    units purged here is refused unless --purge-remote.

    Examples:

      memos sync

      memos sync usb --json

      memos sync origin --purge-remote
    """
    from memos_cli.portable.sync import sync as run

    store = open_existing_store(ctx)
    report = run(store, remote, purge_remote=purge_remote, push=not no_push)
    say_notices(store)
    if json_out:
        print_json(report.to_json())
        return
    from .render import printable as safe

    what = {"up to date": "up to date", "pushed": "pushed this store's changes",
            "fast-forward": f"fast-forward, {len(report.taken) + len(report.removed)} units changed",
            "merged": f"merged: {len(report.taken)} units taken, {len(report.merged)} merged field by field, "
                      f"{len(report.conflicts)} conflicts"}[report.action]
    if report.action in ("fast-forward", "merged") and report.pushed:
        what += ", and pushed"
    print(f"{safe(report.remote)}: {what} ({report.seconds:.1f}s)")
    for note in report.notes:
        print(f"memos: {note}", file=sys.stderr)
    for c in report.conflicts:
        print(f"  conflict {c.id}: {safe(c.reason)}")
    for line in report.other_conflicts:
        print(f"  conflict {safe(line)}")
    if report.conflicts:
        print("  (memos conflicts shows the versions not kept)")


@app.command()
def clone(
    url: Annotated[str, typer.Argument(metavar="URL", help="A git URL or a folder holding a memos store.")],
    directory: Annotated[str, typer.Argument(metavar="DIR", help="A new or empty folder.")],
    json_out: JsonOpt = False,
) -> None:
    """Make a new store from a remote one, with all of its history, and build its search table.

    The remote is named origin; `memos --store DIR sync` keeps the two in step.

    Examples:

      memos clone ssh://me@box/srv/memory.git ~/.memos

      memos clone /media/usb/memory.git ~/memory
    """
    from memos_cli.portable.sync import clone as run

    with progress_bar(not json_out, "embedding") as bar:
        result = run(url, directory, None if bar is None else (lambda done, total: bar("embedding", done, total)))
    if json_out:
        print_json(result)
    else:
        print(f"cloned {result['units']} units into {result['store']} ({result['seconds']:.1f}s)")


@app.command()
def conflicts(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", min=1, help="At most this many.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Show the conflicts of past syncs, newest first, with the version that was not kept.

    Example: memos conflicts -n 5
    """
    from memos_cli.portable.sync import conflicts as find

    store = open_existing_store(ctx)
    found = find(store, limit)
    if json_out:
        print_json(found)
        return
    if not found:
        print("no conflicts in this store's syncs", file=sys.stderr)
        return
    from .render import printable as safe

    for c in found:
        when = datetime.fromtimestamp(c["when"], UTC).astimezone().strftime("%Y-%m-%d %H:%M")
        print(f"{c['id']}  {when}  {safe(c['remote'])}  kept {c['kept']}: {safe(c['reason'])}")
        if c["other_text"] is not None:
            print(f"    not kept: {safe(c['other_text'])}")
