"""Commands that change or remove memories: edit, pin, unpin, forget, purge."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from memos_cli.errors import MemosError, UsageError
from memos_cli.privacy.policy import parse_override

from .app import app
from .common import PrivacyOpt, confirm, open_existing_store, print_json, read_source, say_notices
from .read import CubeF, KindF, SinceF, TagF, UntilF, UserF, _filters

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")]


@app.command()
def edit(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(help="A unit's id, or a unique prefix of it.", metavar="ID")],
    text: Annotated[str | None, typer.Option("--text", metavar="TEXT", help="New text ('-' reads stdin).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", metavar="TAG", help="Add a tag; repeat for more.")] = None,
    untag: Annotated[list[str] | None, typer.Option("--untag", metavar="TAG", help="Remove a tag.")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", "-m", metavar="KEY=VALUE",
                                       help="Set a meta key (JSON values allowed); 'KEY=' removes it.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", metavar="KIND", help="New kind.")] = None,
    importance: Annotated[float | None, typer.Option("--importance", metavar="0..1", min=0.0, max=1.0,
                                         help="New importance.")] = None,
    time_: Annotated[str | None, typer.Option("--time", metavar="TIME", help="When it happened.")] = None,
    privacy: PrivacyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change a memory: a new version of it, the old one kept in history.

    With no flags, opens $VISUAL or $EDITOR on its text and fields; the flags
    are for scripts. A changed text is embedded again.

    Examples:

      memos edit 01jd3x7k9m

      memos edit 01jd3x7k9m --text "Alice lives in Porto" --tag moved

      memos edit 01jd3x7k9m --meta source=email --untag draft
    """
    from memos_cli.plaintext.units import check_importance, check_meta, check_tags, check_text, parse_meta_pairs, parse_time

    override = parse_override(privacy)
    store = open_existing_store(ctx)
    unit = store.get(unit_id)
    scripted = any(v is not None for v in (text, tag, untag, meta, kind, importance, time_))
    changes: dict[str, Any] | None
    if scripted:
        changes = {}
        if text is not None:
            changes["text"] = check_text(read_source("-", "text") if text == "-" else text)
        if tag or untag:
            tags = [t for t in unit.tags if t not in (untag or [])]
            changes["tags"] = tags + [t for t in check_tags(tag or []) if t not in tags]
        if meta:
            updated = dict(unit.meta)
            for pair in meta:
                if pair.endswith("=") and pair.count("=") == 1:
                    updated.pop(pair[:-1].strip(), None)
                else:
                    updated.update(parse_meta_pairs([pair]))
            changes["meta"] = check_meta(updated)
        if kind is not None:
            changes["kind"] = kind
        if importance is not None:
            changes["importance"] = check_importance(importance)
        if time_ is not None:
            changes["time"] = parse_time(time_, "--time")
    else:
        changes = _edit_in_editor(unit)
        if changes is None:
            print("memos: edit cancelled; nothing changed", file=sys.stderr)
            return
    from memos_cli.plaintext.units import check_name

    if "kind" in changes:
        check_name(changes["kind"], "kind")
    new = store.edit(unit.id, changes, expect_version=unit.version, privacy=override)
    say_notices(store)
    if json_out:
        print_json({"changed": new is not None, "unit": (new or unit).to_json()})
    elif new is None:
        print(f"{unit.id}: no changes")
    else:
        print(f"{new.id}: version {new.version}")


def _edit_in_editor(unit: Any) -> dict[str, Any] | None:
    from memos_cli.plaintext import editing

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("no terminal to edit on and no $EDITOR: use --text, --tag, --meta (see --help)")
        editor = "vi"
    with tempfile.TemporaryDirectory(prefix="memos-edit-") as tmp:
        path = Path(tmp) / f"{unit.id}.memos.toml"
        path.write_text(editing.render(unit), encoding="utf-8")
        try:
            # Through the shell, so that EDITOR="code --wait" works.
            done = subprocess.run(["/bin/sh", "-c", f'{editor} "$1"', "memos-edit", str(path)])
        except OSError as exc:
            raise UsageError(f"cannot run the editor {editor!r}: {exc}") from None
        if done.returncode != 0:
            raise UsageError(f"the editor {editor!r} exited with status {done.returncode}; nothing changed")
        try:
            document = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the edited memory: {exc}; nothing changed") from None
    try:
        return editing.parse(document)
    except UsageError as exc:
        raise UsageError(f"{exc}; nothing changed") from None


PinIds = Annotated[list[str], typer.Argument(help="Ids (or unique prefixes) of memories.", metavar="ID...",
                                              show_default=False)]


@app.command()
def pin(ctx: typer.Context, unit_ids: PinIds, json_out: JsonOpt = False) -> None:
    """Pin memories: always in context, in the activation memory of their cube.

    Pinning is placement, not content: the memories keep their version, and
    the change is one commit (`memos unpin` undoes it). Only active memories
    can be pinned; those already pinned are left as they are.

    Examples:

      memos pin 01jd3x7k9m 01jd3x8a2b

      memos list --pinned
    """
    _pin(ctx, unit_ids, True, json_out)


@app.command()
def unpin(ctx: typer.Context, unit_ids: PinIds, json_out: JsonOpt = False) -> None:
    """Unpin memories: back to being recalled only when they match.

    Example: memos unpin 01jd3x7k9m
    """
    _pin(ctx, unit_ids, False, json_out)


def _pin(ctx: typer.Context, unit_ids: list[str], pinned: bool, json_out: bool) -> None:
    store = open_existing_store(ctx)
    changed = store.pin(unit_ids, pinned)
    say_notices(store)
    word = "pinned" if pinned else "unpinned"
    if json_out:
        print_json({word: [u.id for u in changed], "commit": store.repo.head() if changed else None})
    elif not changed:
        print(f"nothing to change: {'all' if len(unit_ids) > 1 else 'it is'} already {word}")
    else:
        n = len(changed)
        print(f"{word} {n} memor{'y' if n == 1 else 'ies'}"
              + ("" if n >= len(set(unit_ids)) else f" (the others were already {word})"))


@app.command()
def forget(
    ctx: typer.Context,
    unit_ids: Annotated[list[str] | None, typer.Argument(help="Ids (or unique prefixes) to forget.",
                                                         metavar="ID...", show_default=False)] = None,
    where: Annotated[bool, typer.Option("--where", help="Forget every memory matching the filters.")] = False,
    kind: KindF = None, tag: TagF = None, cube: CubeF = None, user: UserF = None,
    since: SinceF = None, until: UntilF = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Forget memories: gone from recall, kept in history (`memos rollback` undoes it).

    With --where, forgets every active memory matching the filters, after
    asking on a terminal (--yes for scripts). To remove text from history
    as well, use `memos purge`.

    Examples:

      memos forget 01jd3x7k9m 01jd3x8a2b

      memos forget --where --tag draft --until "30d ago" --yes
    """
    filtered = any(v for v in (kind, tag, cube, user, since, until))
    if where and unit_ids:
        raise UsageError("give ids or --where with filters, not both")
    if not where and filtered:
        raise UsageError("filters select memories only with --where (memos forget --where --tag T)")
    if where and not filtered:
        raise UsageError("--where needs at least one filter (--kind, --tag, --cube, --user, --since, --until)")
    if not where and not unit_ids:
        raise UsageError("give the ids of the memories to forget, or --where with filters")
    store = open_existing_store(ctx)
    if where:
        units = store.list(_filters(kind, tag, cube, user, since, until), limit=0)
        if not units:
            raise UsageError("no active memory matches those filters; nothing forgotten")
        confirm(f"forget {len(units)} memor{'y' if len(units) == 1 else 'ies'}", [u.text for u in units], yes,
                required=True)
        ids = [u.id for u in units]
    else:
        ids = list(unit_ids or [])
    forgotten = store.forget(ids)
    say_notices(store)
    if json_out:
        print_json({"forgotten": [u.id for u in forgotten], "commit": store.repo.head() if forgotten else None})
    else:
        print(f"forgot {len(forgotten)} memor{'y' if len(forgotten) == 1 else 'ies'}"
              + ("" if len(forgotten) == len(ids) else f" ({len(ids) - len(forgotten)} already forgotten)"))


@app.command()
def purge(
    ctx: typer.Context,
    unit_ids: Annotated[list[str], typer.Argument(help="Ids (or unique prefixes) to purge.", metavar="ID...",
                                                  show_default=False)],
    in_history: Annotated[bool, typer.Option("--in-history",
                                             help="Also purge ids that are only in history (forgotten by rollback).")] = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete memories for good: from the store, its search table and all of git history.

    For a leaked secret or a request to be forgotten. Rewrites history (commit
    ids change) and cannot be undone; clones, remotes and backups made before
    keep their copy. Asks on a terminal; needs --yes otherwise.

    Example: memos purge 01jd3x7k9m --yes
    """
    from memos_cli.store.purge import purge as run_purge

    store = open_existing_store(ctx)
    texts = []
    for uid in unit_ids:
        try:
            texts.append(store.get(uid).text)
        except MemosError:  # only in history, or unknown: purge says which
            texts.append(uid)
    confirm(f"purge {len(unit_ids)} memor{'y' if len(unit_ids) == 1 else 'ies'} from all history (cannot be undone)",
            texts, yes, required=True)
    report = run_purge(store, unit_ids, in_history=in_history)
    say_notices(store)
    if json_out:
        print_json(report.to_json())
        return
    print(f"purged {len(report.ids)} memor{'y' if len(report.ids) == 1 else 'ies'}: {' '.join(report.ids)}")
    print(f"  removed {report.blobs_removed} versions of them from history, rewriting it from the first of the "
          f"{report.commits_rewritten} commits that changed them; expired the reflogs and pruned unreachable objects")
    print(f"  rebuilt the search table ({report.table_rows} units)")
    if report.params:
        print(f"  removed the parametric memories learned from them, from the store and all history: "
              f"{' '.join(report.params)}")
    for note in report.notes:
        print(f"  {note}")
    print("  remotes and clones made before still have them: `memos sync --purge-remote` removes them from a remote's "
          "history, and a clone that syncs applies the purge; backups keep them")
