"""Commands that read memory: recall, list, show, stats. None of them commits."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from memos_cli.errors import UsageError

from .app import app
from .common import iter_json_lines, open_existing_store, print_json, read_source, say_notices, server_for

KindF = Annotated[str | None, typer.Option("--kind", metavar="KIND", help="Only this kind.")]
TagF = Annotated[list[str] | None, typer.Option("--tag", "-t", metavar="TAG",
                                   help="Only units with this tag; repeat to require more.")]
CubeF = Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Only this cube.")]
UserF = Annotated[str | None, typer.Option("--user", metavar="USER", help="Only this user's units.")]
SinceF = Annotated[str | None, typer.Option("--since", metavar="TIME",
                               help="Only units whose time is at or after this (ISO 8601, '7d ago').")]
UntilF = Annotated[str | None, typer.Option("--until", metavar="TIME", help="Only units whose time is before this.")]
PinnedF = Annotated[bool | None, typer.Option("--pinned/--unpinned", show_default=False,
                                              help="Only pinned units (--unpinned: only units not pinned).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


class Status(StrEnum):
    active = "active"
    archived = "archived"
    deleted = "deleted"
    all = "all"


def _filters(kind: str | None, tag: list[str] | None, cube: str | None, user: str | None,
             since: str | None, until: str | None, status: str | None = "active", pinned: bool | None = None) -> Any:
    from memos_cli.plaintext.retrieval import Filters
    from memos_cli.plaintext.units import STATUSES, parse_time

    if status is not None and status not in STATUSES:
        raise UsageError(f"bad status {status!r}: use one of {', '.join(STATUSES)} or 'all'")
    return Filters(kind=kind, tags=tag or [], cube=cube, user=user,
                   since=parse_time(since, "--since"), until=parse_time(until, "--until"), status=status, pinned=pinned)


@app.command()
def recall(
    ctx: typer.Context,
    query: Annotated[list[str] | None, typer.Argument(help="What to recall.", metavar="QUERY...", show_default=False)] = None,
    k: Annotated[int | None, typer.Option("-k", metavar="N", help="How many results (default: \\[recall] k in "
                                          "memos.toml, 10).", min=1, max=1000)] = None,
    kind: KindF = None, tag: TagF = None, cube: CubeF = None, user: UserF = None,
    since: SinceF = None, until: UntilF = None, pinned: PinnedF = None,
    batch: Annotated[str | None, typer.Option("--batch", metavar="FILE|-",
                     help='JSON lines {"query", "k"}; writes one JSON line per query.')] = None,
    context: Annotated[bool, typer.Option("--context/--no-context",
                       help="Bring the neighbouring turns of conversation hits (episodes of one session).")] = True,
    min_relevance: Annotated[float | None, typer.Option(
        "--min-relevance", metavar="X", min=0.0, max=1.0,
        help="Drop results whose relevance (0 to 1, comparable across queries) is below X; none left "
             "prints 'no match' (default: \\[recall] min_relevance in memos.toml, 0).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show the signals that ranked each result, and how "
                                          "its relevance was reached.")] = False,
    mask: Annotated[bool, typer.Option("--mask", help="Hide the kinds \\[privacy] mask names (secrets and personal "
                                                      "data by default) as \\[redacted:KIND]; memory is not changed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Find the memories that best match a query (full-text and vector search, fused).

    Examples:

      memos recall "what does Alice drink" -k 5

      memos recall "deadline" --tag work --since "30d ago" --json

      memos recall "how should replies sound" --pinned

      memos recall "when did Bob move" --explain

      memos recall "what is Carol's phone number" --min-relevance 0.5

      memos recall --batch questions.jsonl > answers.jsonl

      memos recall "who to call about the lease" --mask
    """
    if batch is None and not query:
        raise UsageError("give a query, or --batch FILE")
    if batch is not None and query:
        raise UsageError("give either a query or --batch, not both")
    if batch is None and not explain and not mask and user is None and (server := server_for(ctx)) is not None:
        _recall_via(server, " ".join(query or []), k, kind, tag, cube, since, until, pinned, context, min_relevance,
                    json_out)
        return
    filters = _filters(kind, tag, cube, user, since, until, pinned=pinned)
    if batch is not None:
        queries, ks = [], []
        for lineno, rec in iter_json_lines(read_source(batch, "input")):  # checked in order: the first bad line is named
            if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
                raise UsageError(f"line {lineno}: expected {{\"query\": \"...\", \"k\": N}}")
            kk = rec.get("k", k)  # None: [recall] k of memos.toml
            if "k" in rec and (not isinstance(kk, int) or isinstance(kk, bool) or not 1 <= kk <= 1000):
                raise UsageError(f"line {lineno}: bad k {kk!r}")
            queries.append(rec["query"])
            ks.append(kk)
        store = open_existing_store(ctx)
        ks = [kk or store.config.recall_k for kk in ks]
        store.preload_embedder()
        floor = store.config.recall_min_relevance if min_relevance is None else min_relevance
        results = store.recall_many(queries, ks, filters, context=context, min_relevance=floor) if queries else []
        if mask:
            results = [_masked(store, hits) for hits in results]
        say_notices(store)  # an upgrade or a rebuild of the search table, done on the way
        for q, hits in zip(queries, results, strict=True):
            print_json({"query": q, "results": [h.to_json(explain) for h in hits]})
        return
    text = " ".join(query or [])
    store = open_existing_store(ctx)
    store.preload_embedder()
    floor = store.config.recall_min_relevance if min_relevance is None else min_relevance
    hits = store.recall(text, k or store.config.recall_k, filters, context=context, min_relevance=floor)
    if mask:
        hits = _masked(store, hits)
    say_notices(store)
    if json_out:
        print_json({"query": text, "results": [h.to_json(explain) for h in hits]})
    else:
        from .render import hits_table

        hits_table(hits, text, explain)


def _recall_via(server: Any, text: str, k: int | None, kind: str | None, tag: list[str] | None, cube: str | None,
                since: str | None, until: str | None, pinned: bool | None, context: bool, min_relevance: float | None,
                json_out: bool) -> None:
    """Recall through the store's running server (it has everything loaded); printed as a local recall is."""
    from types import SimpleNamespace

    body = {"query": text, "context": context, "cube": cube, "kind": kind, "tags": tag or None, "since": since,
            "until": until, "min_relevance": min_relevance, **({"k": k} if k else {})}
    if pinned is not None:
        body["pinned"] = pinned
    answer = server.request("POST", "/v1/recall", {key: v for key, v in body.items() if v is not None})
    if json_out:
        print_json(answer)
        return
    from .render import hits_table

    hits = [SimpleNamespace(unit=SimpleNamespace(id=r["id"], text=r["text"], time=r["time"], kind=r["kind"]),
                            score=r["score"], relevance=r.get("relevance"), before=[], after=[])
            for r in answer["results"]]
    hits_table(hits, text)


def _masked(store: Any, hits: list[Any]) -> list[Any]:
    """Copies of the hits with what the privacy policy's ``mask`` names hidden."""
    import dataclasses

    from memos_cli.privacy.guard import masker

    mask = masker(store.config.privacy)
    return [dataclasses.replace(h, unit=mask(h.unit), before=[mask(u) for u in h.before], after=[mask(u) for u in h.after])
            for h in hits]


@app.command("list")
def list_(
    ctx: typer.Context,
    kind: KindF = None, tag: TagF = None, cube: CubeF = None, user: UserF = None,
    since: SinceF = None, until: UntilF = None, pinned: PinnedF = None,
    status: Annotated[Status, typer.Option("--status", help="Which lifecycle state to list.")] = Status.active,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", help="At most this many (0: all).", min=0)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List memories, newest first.

    Examples:

      memos list --kind fact --tag alice -n 20

      memos list --pinned --cube work
    """
    filters = _filters(kind, tag, cube, user, since, until, None if status is Status.all else status.value, pinned)
    store = open_existing_store(ctx)
    units = store.list(filters, limit=limit)
    say_notices(store)
    if json_out:
        print_json([u.to_json() for u in units])
    else:
        from .render import units_table

        units_table(units)


@app.command()
def show(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(help="A unit's id, or a unique prefix of it.", metavar="ID")],
    history: Annotated[bool, typer.Option("--history", help="Every version of it, from git history.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show one memory with all its fields, or every version of it.

    With --history, a full id also finds a memory that is no longer in the
    store (removed by a rollback).

    Examples:

      memos show 01jd3x7k9m

      memos show 01jd3x7k9m --history
    """
    store = open_existing_store(ctx)
    if history:
        from memos_cli.store.history import unit_versions

        versions = unit_versions(store, unit_id)
        if json_out:
            print_json([v.to_json() for v in versions])
        else:
            from .render import versions_view

            versions_view(versions)
        return
    unit = store.get(unit_id)
    say_notices(store)
    if json_out:
        print_json(unit.to_json())
    else:
        from .render import unit_detail

        unit_detail(unit)


@app.command()
def stats(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Counts by kind, status and cube, and sizes on disk.

    Example: memos stats --json
    """
    store = open_existing_store(ctx)
    data = store.stats()
    say_notices(store)
    if json_out:
        print_json(data)
    else:
        from .render import stats_view

        stats_view(data)
