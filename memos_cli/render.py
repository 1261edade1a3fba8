"""Rich rendering of units, hits and stats for people; JSON is in the commands."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .core.units import MemoryUnit, iso

console = Console()


def _short_time(value: Any) -> str:
    """The date of a time, for tables; `show` and --json give the whole time."""
    text = iso(value) if value is not None and not isinstance(value, str) else (value or "")
    return text[:10]


def _clip(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def units_table(units: list[MemoryUnit], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in ("id", "time", "kind", "cube", "tags", "text"):
        table.add_column(col, overflow="fold" if col == "text" else "ellipsis", no_wrap=col != "text")
    for u in units:
        table.add_row(u.id, _short_time(u.time), u.kind, u.cube, ",".join(u.tags), _clip(u.text))
    console.print(table)


def hits_table(hits: list[Any], query: str, explain: bool = False) -> None:
    if not hits:
        console.print(f"[dim]nothing recalled for {query!r}[/dim]")
        return
    table = Table(header_style="bold", show_lines=explain)
    columns = ("score", "id", "time", "kind", "text") + (("why",) if explain else ())
    for col in columns:
        table.add_column(col, overflow="fold" if col in ("text", "why") else "ellipsis", no_wrap=col not in ("text", "why"))
    for h in hits:
        text = escape(_clip(h.unit.text, 140))
        if h.before or h.after:  # context turns, dimmed around the hit
            text = "\n".join([*(f"[dim]{escape(_clip(u.text, 140))}[/dim]" for u in h.before), text,
                              *(f"[dim]{escape(_clip(u.text, 140))}[/dim]" for u in h.after)])
        row = [f"{h.score:.4f}", h.unit.id, _short_time(h.unit.time), h.unit.kind, text]
        if explain:
            e = h.explain()
            parts = [f"text #{e['text']['rank']} bm25 {e['text']['bm25']} -> {e['text']['norm']:.2f} x {e['text']['weight']}"
                     if e["text"]["rank"] else "text: not in its pool",
                     f"vector #{e['vector']['rank']} cos {e['vector']['cosine']} -> {e['vector']['norm']:.2f} x "
                     f"{e['vector']['weight']}" if e["vector"]["rank"] else "vector: not in its pool"]
            if e["context"]:
                parts.append(f"context: {e['context']}")
            if e["closed"]:
                parts.append(f"superseded since {e['closed']['valid_to'][:10]}: x {e['closed']['weight']}")
            row.append(escape("\n".join(parts)))
        table.add_row(*row)
    console.print(table)


def unit_detail(unit: MemoryUnit) -> None:
    data = unit.to_json()
    text = data.pop("text")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        if value is None or (not isinstance(value, bool) and value in ([], {}, "")):
            continue
        table.add_row(key, ("yes" if value else "no") if isinstance(value, bool) else str(value))
    console.print(table)
    console.print()
    console.print(text, markup=False, highlight=False)


def stats_view(stats: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif key.endswith("_bytes"):
            value = human_bytes(value)
        table.add_row(key.replace("_bytes", "").replace("_", " "), str(value))
    console.print(table)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def log_table(commits: list[Any]) -> None:
    if not commits:
        console.print("[dim]no history[/dim]")
        return
    table = Table(header_style="bold")
    for col in ("commit", "when", "user", "op", "units", "what"):
        table.add_column(col, overflow="fold" if col == "what" else "ellipsis", no_wrap=col != "what")
    for c in commits:
        data = c.to_json()
        when = c.when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        units = "" if data["units"] is None else str(data["units"])
        what = c.subject
        if c.op != "git":  # "op: what (cube C, user U)": op, cube and user have their columns
            what = re.sub(r" \(cube [^)]*\)$", "", what.split(": ", 1)[-1])
        table.add_row(c.sha[:10], when, data["user"], c.op, units, what)
    console.print(table)


def _value(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _text_lines(lines: list[str], indent: str = "    ") -> None:
    for line in lines:
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
        console.print(f"{indent}{line}", style=style, markup=False, highlight=False)


def diff_view(diff: Any, usage: bool = False) -> None:
    usage_only = [c for c in diff.changes if c.usage_only]
    shown = [c for c in diff.changes if usage or not c.usage_only]
    head = (f"[bold]{diff.old[:10]}..{diff.new[:10]}[/bold]: {diff.count('added')} added, "
            f"{diff.count('removed')} removed, {diff.count('changed')} changed")
    if usage_only and not usage:
        head += f" [dim](and access counts of {len(usage_only)} units; --usage lists them)[/dim]"
    console.print(head, highlight=False)
    for c in shown:
        if c.change == "added":
            console.print(f"[green]+ {c.id}[/green] {escape(f'[{c.new.kind}]')} {escape(_clip(c.new.text))}",
                          highlight=False)
        elif c.change == "removed":
            console.print(f"[red]- {c.id}[/red] {escape(f'[{c.old.kind}]')} {escape(_clip(c.old.text))}",
                          highlight=False)
        else:
            versions = f" version {c.old.version} -> {c.new.version}" if c.old.version != c.new.version else ""
            console.print(f"[yellow]~ {c.id}[/yellow]{versions}", highlight=False)
            old, new = c.old.to_json(), c.new.to_json()
            for name in c.fields:
                if name != "text":
                    console.print(f"    {name}: {_value(old[name])} -> {_value(new[name])}", markup=False,
                                  highlight=False)
            if "text" in c.fields:
                console.print("    text:")
                _text_lines(c.text_diff(), "      ")


def versions_view(versions: list[Any]) -> None:
    for v in versions:
        c = v.commit
        when = c.when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        unit = v.unit
        label = f"v{unit.version} {unit.status}" if unit else "removed"
        fields = [f for f in v.fields if f not in ("updated_at", "version")]
        what = "created" if not v.fields else ", ".join(fields) or "touched"
        console.print(f"[yellow]{c.sha[:10]}[/yellow] {when} {escape(c.to_json()['user'])} [bold]{c.op}[/bold] "
                      f"{label}: {escape(what)}", highlight=False)
        if unit and (not v.fields or "text" in v.fields or "restored" in v.fields):
            for line in unit.text.splitlines() or [""]:
                console.print(f"    {line}", markup=False, highlight=False)


def check_view(report: Any) -> None:
    for line in report.repaired:
        console.print(f"[green]repaired:[/green] {line}", highlight=False)
    for p in report.problems:
        state = "[green]fixed[/green]" if p.fixed else "[red]problem[/red]"
        hint = " (memos check --repair fixes it)" if p.fixable and not p.fixed else ""
        console.print(f"{state} {escape(f'[{p.area}]')} {escape(p.message)}{hint}", highlight=False)
    if report.ok:
        console.print(f"[green]ok[/green]: {report.units} units at {str(report.head)[:10]}, the search table "
                      f"({report.rows} rows), embeddings and indexes are in step", highlight=False)


_KV_STATUS_STYLE = {"current": "green", "stale": "yellow", "missing": "red", "other model": "yellow"}


def kv_table(records: list[Any]) -> None:
    if not records:
        console.print("[dim]no activation memories; build one with `memos kv build --pinned`[/dim]")
        return
    table = Table(header_style="bold")
    for col in ("id", "cube", "block", "units", "tokens", "size", "status"):  # `kv show` has the model and the rest
        wrap = col in ("block", "status")
        table.add_column(col, overflow="fold" if wrap else "ellipsis", no_wrap=not wrap,
                         justify="right" if col in ("units", "tokens", "size") else "left")
    for a in records:
        style = _KV_STATUS_STYLE.get(a.status, "")
        status = f"[{style}]{escape(a.status)}[/{style}]" if style else escape(a.status)
        if a.reason and a.status != "current":
            status += f" [dim]({escape(a.reason)})[/dim]"
        table.add_row(a.id, a.cube, escape(a.selection.describe()), str(len(a.sources)), str(a.n_tokens),
                      human_bytes(a.bytes), status)
    console.print(table)


def kv_detail(record: Any, with_text: bool) -> None:
    data = record.to_json(with_preamble=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    model = data.pop("model")
    units = data.pop("units")
    data["selection"] = record.selection.describe()
    data["bytes"] = f"{human_bytes(record.bytes)} ({data['bytes_per_token']} bytes per token)"
    data.pop("bytes_per_token")
    for key, value in data.items():
        if value in (None, ""):
            continue
        table.add_row(key, escape(str(value)))
    table.add_row("model", escape(f"{model.get('name')} ({model.get('arch')}), sha256 {model.get('sha256')}, "
                                  f"ctx {model.get('n_ctx')}"))
    table.add_row("units", escape(", ".join(f"{u['id']} v{u['version']}" for u in units)))
    console.print(table)
    if with_text:
        console.print()
        console.print(record.preamble, markup=False, highlight=False)


_ACTION_STYLE = {"done": "green", "planned": "cyan", "skipped": "yellow"}


def consolidate_view(report: Any) -> None:
    """The plan of a consolidate run (what was done, or would be), then its summary."""
    if report.actions:
        table = Table(header_style="bold")
        for col in ("action", "cube", "units", "reason", "status"):
            wrap = col in ("units", "reason", "status")
            table.add_column(col, overflow="fold" if wrap else "ellipsis", no_wrap=not wrap)
        for a in report.actions:
            style = _ACTION_STYLE.get(a.status, "")
            status = f"[{style}]{a.status}[/{style}]" + (f" [dim]({escape(a.note)})[/dim]" if a.note else "")
            units = " ".join(a.units) if len(a.units) <= 6 else " ".join(a.units[:5]) + f" … (+{len(a.units) - 5})"
            table.add_row(a.action, a.cube, units, escape(a.reason), status)
        console.print(table)
    for line in report.maintenance:
        console.print(f"[dim]{escape(line)}[/dim]")
    commit = f" (commit {report.commit[:10]})" if report.commit else ""
    console.print(f"{escape(report.summary())}{commit} in {report.seconds:.1f}s")
