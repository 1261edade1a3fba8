"""Commands that add memory: init, add, import."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from memos_cli.privacy.policy import parse_override

from .app import app
from .common import PrivacyOpt, open_store, print_json, read_source, say_notices, server_for

KindOpt = Annotated[str, typer.Option("--kind", metavar="KIND", help="fact, preference, episode, note, or a word of your own.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", "-t", metavar="TAG", help="A tag; repeat for more.")]
MetaOpt = Annotated[list[str] | None, typer.Option("--meta", "-m", metavar="KEY=VALUE",
                                      help="key=value (JSON values allowed); repeat for more.")]
CubeOpt = Annotated[str, typer.Option("--cube", metavar="CUBE", help="Namespace for this memory.")]
UserOpt = Annotated[str | None, typer.Option("--user", metavar="USER", help="Who it belongs to (default: $MEMOS_USER or $USER).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command()
def init(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Create the memory store (the first write creates it too).

    Example: memos --store ~/notes-memory init
    """
    store = open_store(ctx)
    created = store.init()
    say_notices(store)
    if json_out:
        print_json({"store": str(store.root), "created": created})
    else:
        print(f"{'created' if created else 'already a store:'} {store.root}")


@app.command()
def add(
    ctx: typer.Context,
    text: Annotated[list[str], typer.Argument(help="The memory; '-' reads it from stdin.", metavar="TEXT", show_default=False)],
    kind: KindOpt = "note",
    tag: TagOpt = None,
    meta: MetaOpt = None,
    time_: Annotated[str | None, typer.Option("--time", metavar="TIME",
                                 help="When it happened: ISO 8601, 'yesterday', '3d ago'.")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", metavar="DURATION",
                               help="Expire after this long: 90s, 12h, 30d, 1y.")] = None,
    importance: Annotated[float, typer.Option("--importance", metavar="0..1", help="0 to 1.", min=0.0, max=1.0)] = 0.5,
    cube: CubeOpt = "default",
    user: UserOpt = None,
    pin: Annotated[bool, typer.Option("--pin", help="Pin it: always in context (see `memos pin`).")] = False,
    privacy: PrivacyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remember something; prints the new id.

    Text and meta are screened first: by default a secret (an API key, a
    token, a password) is refused with one line naming its kind, and nothing
    is written; `memos config` shows the \\[privacy] policy.

    Examples:

      memos add "Alice prefers tea over coffee" --kind preference --tag alice

      echo "standup moved to 10:00" | memos add - --ttl 30d

      memos add "Answer in British English" --kind preference --pin

      memos add "Bob's e-mail is bob@example.org" --privacy email=redact
    """
    from memos_cli.plaintext.units import parse_meta_pairs

    override = parse_override(privacy)
    body = read_source("-", "text") if text == ["-"] else " ".join(text)
    if (server := server_for(ctx)) is not None:  # the server has the model loaded; its adds share commits
        fields = {"text": body, "kind": kind, "tags": tag or [], "meta": parse_meta_pairs(meta or []), "time": time_,
                  "ttl": ttl, "importance": importance, "cube": cube, "user": user, "pinned": pin, "privacy": override}
        added = server.request("POST", "/v1/remember", {k: v for k, v in fields.items() if v is not None})
        print_json(added) if json_out else print(added["id"])
        return
    store = open_store(ctx)
    unit = store.add(
        body, kind=kind, tags=tag or [], meta=parse_meta_pairs(meta or []), time=time_, ttl=ttl,
        importance=importance, cube=cube, user=user, pinned=pin, privacy=override,
    )
    say_notices(store)
    if json_out:
        print_json(unit.to_json())
    else:
        print(unit.id)


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A file or folder, or '-' for JSON lines on stdin.", metavar="PATH|-")],
    from_: Annotated[str | None, typer.Option(
        "--from", metavar="FORMAT",
        help="What PATH is (default: detected): jsonl, memos (an export), pack, mem0, letta, markdown, chatgpt, "
             "claude.")] = None,
    kind: KindOpt = "note",
    cube: CubeOpt = "default",
    user: UserOpt = None,
    privacy: PrivacyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import many memories in one commit, all or nothing.

    JSON lines: each line is an object {"text", "time", "kind", "tags",
    "meta"} and optionally "cube", "user", "importance", "ttl", "sources",
    "pinned" (true: always in context, see `memos pin`); flags give the
    defaults for fields a line leaves out.

    A memos export (`memos export`: JSON lines or a Markdown folder) or a
    pack brings back whole units, with their ids, times and versions: they
    are merged by id, so importing the same file twice changes nothing (the
    flags do not apply to them).

    Other tools' exports become new memories, their times and provenance in
    meta and sources: Mem0 (get_all or search JSON), Letta agent files
    (.af), Markdown notes with front matter (basic-memory, Obsidian), and the
    conversations.json of ChatGPT and Claude (each conversation a session of
    episodes).

    A bad line or entry is named and nothing is imported; so is a secret the
    \\[privacy] policy refuses (--privacy redact stores it as
    \\[redacted:KIND] instead).

    Examples:

      memos import chats.jsonl --cube work

      memos import backup.jsonl            # from memos export

      memos import work.pack

      memos import ~/Downloads/conversations.json --from chatgpt --cube chats
    """
    from memos_cli.portable.sources import open_source

    override = parse_override(privacy)
    src = open_source(source, from_)  # read and checked whole before the store is touched
    store = open_store(ctx)
    started = time.perf_counter()
    total = len(src.units) if src.whole_units else src.total
    with _embedding_bar(not json_out, total) as progress:
        if src.whole_units:
            result = store.import_units(src.units, where=src.wheres, privacy=override, parametric=src.parametric,
                                        progress=progress)
        else:
            defaults = {"kind": kind, "cube": cube, **({"user": user} if user else {})}
            assert src.records is not None
            units = store.import_records(src.records, defaults=defaults, privacy=override, progress=progress)
            result = {"added": [u.id for u in units], "updated": [], "unchanged": 0, "params": [],
                      "commit": store.repo.head()}
    seconds = time.perf_counter() - started
    say_notices(store)
    added, updated = result["added"], result["updated"]
    if json_out:
        print_json({"format": src.format, "imported": len(added) + len(updated), "added": len(added),
                    "updated": len(updated), "unchanged": result["unchanged"], "params": result["params"],
                    "ids": added + updated, "seconds": round(seconds, 3), "commit": result["commit"]})
    elif src.whole_units:
        extra = f", {len(result['params'])} parametric memories" if result["params"] else ""
        print(f"imported {src.format}: {len(added)} added, {len(updated)} merged by id, {result['unchanged']} "
              f"unchanged{extra} in {seconds:.1f}s")
    else:
        print(f"imported {len(added)} memories in {seconds:.1f}s ({len(added) / max(seconds, 1e-9):.0f}/s)")


@contextmanager
def _embedding_bar(show: bool, total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar of the embedding, on a terminal."""
    if not show or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("import", total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)
