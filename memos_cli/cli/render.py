"""Rich rendering of units, hits and stats for people; JSON is in the commands.

Everything from memory (text, tags, meta, names, commit subjects) goes
through ``printable`` (or ``safe``, inside markup and table cells) before it
reaches the terminal, and times are shown in the local time zone; the JSON
output keeps the exact text, and times in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memos_cli.plaintext.units import TIME_FIELDS, MemoryUnit

console = Console()

# C0 controls but newline and tab, DEL and the C1 controls: ESC starts the sequences that
# recolour a terminal, set its title (OSC 0) or write its clipboard (OSC 52); 0x9b is a
# one-byte CSI for terminals that take C1 controls, 0x07 ends an OSC.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """Text from memory, safe to print on a terminal: each control character is shown
    as a visible escape (ESC as ``\\x1b``); newlines and tabs stay."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def safe(text: object) -> str:
    """``printable``, with rich markup escaped too: for text in a markup string or a table cell,
    so that ``[red]x[/red]`` in a memory prints as it is."""
    return escape(printable(text))


def local_time(value: Any, date_only: bool = False) -> str:
    """A time (a datetime, or ISO 8601 text as ``to_json`` gives) in the local time zone, for people:
    ``2024-05-08T13:56:00+02:00``, or with ``date_only`` the local date. JSON keeps UTC."""
    if value is None or value == "":
        return ""
    dt = value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            return printable(value)
    if not isinstance(dt, datetime):
        return printable(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone()
    except (OverflowError, ValueError):  # 9999-12-31T23:00Z is past the end of time east of Greenwich
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%d") if date_only else dt.isoformat(timespec="seconds")


def _short_time(value: Any) -> str:
    """The local date of a time, for tables; `show` gives the whole time and --json the time in UTC."""
    return local_time(value, date_only=True)


def _clip(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(text: str, width: int = 100) -> str:
    """Text from memory for a table cell: on one line, clipped, made safe."""
    return safe(_clip(text, width))


def units_table(units: list[MemoryUnit], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in ("id", "time", "kind", "cube", "tags", "text"):
        table.add_column(col, overflow="fold" if col == "text" else "ellipsis", no_wrap=col != "text")
    for u in units:
        table.add_row(safe(u.id), _short_time(u.time), safe(u.kind), safe(u.cube), safe(",".join(u.tags)),
                      _cell(u.text))
    console.print(table)


def hits_table(hits: list[Any], query: str, explain: bool = False) -> None:
    if not hits:
        console.print(f"[dim]no match for {safe(repr(query))}[/dim]")
        return
    table = Table(header_style="bold", show_lines=explain)
    # Relevance, not the score: it means the same from one query to the next (the score is in --explain).
    for col in ("relevance", "id", "time", "kind", "text"):
        table.add_column(col, overflow="fold" if col == "text" else "ellipsis", no_wrap=col != "text")
    for h in hits:
        text = _cell(h.unit.text, 140)
        if h.before or h.after:  # context turns, dimmed around the hit
            text = "\n".join([*(f"[dim]{_cell(u.text, 140)}[/dim]" for u in h.before), text,
                              *(f"[dim]{_cell(u.text, 140)}[/dim]" for u in h.after)])
        relevance = "" if h.relevance is None else f"{h.relevance:.2f}"
        row = [relevance, safe(h.unit.id), _short_time(h.unit.time), safe(h.unit.kind), text]
        if explain:
            e = h.explain()
            lexical, vector, mix = e["text"], e["vector"], e["unit_relevance"]
            parts = [f"score {e['score']:.4f} = ({e['fused']} fused + {mix['weight']} x relevance "
                     f"{mix['relevance']}) / {1 + mix['weight']}",
                     f"text #{lexical['rank']} bm25 {lexical['bm25']} -> {lexical['norm']:.2f} x {lexical['weight']}"
                     if lexical["rank"] else "text: not in its pool",
                     f"vector #{vector['rank']} cos {vector['cosine']} -> {vector['norm']:.2f} x {vector['weight']}"
                     if vector["rank"] else "vector: not in its pool"]
            if e["context"]:
                parts.append(f"context: {e['context']}")
            if e["closed"]:
                parts.append(f"superseded since {local_time(e['closed']['valid_to'], True)}: x {e['closed']['weight']}")
            if r := e["relevance"]:
                found, missing = r["words_found"], r["words_missing"]
                words = f"{len(found)}/{len(found) + len(missing)} query words" + (
                    f" (missing: {', '.join(missing)})" if missing else "")
                parts.append(f"relevance {r['relevance']:.2f}: cosine {r['cosine']}, {words}"
                             + (f"; {r['note']}" if r.get("note") else ""))
            row[-1] += "\n[dim]" + safe("\n".join(parts)) + "[/dim]"  # under the text: the table keeps its width
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
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif key in TIME_FIELDS:
            shown = local_time(value)
        else:
            shown = str(value)
        table.add_row(key, safe(shown))
    console.print(table)
    console.print()
    console.print(printable(text), markup=False, highlight=False)


def stats_view(stats: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif key.endswith("_bytes"):
            value = human_bytes(value)
        table.add_row(safe(key.replace("_bytes", "").replace("_", " ")), safe(value))
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
        table.add_row(c.sha[:10], when, safe(data["user"]), safe(c.op), units, safe(what))
    console.print(table)


def _value(value: Any) -> str:
    """A field's value as text (lists and objects as JSON); not yet made printable."""
    import json

    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _text_lines(lines: list[str], indent: str = "    ") -> None:
    for line in lines:
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
        console.print(f"{indent}{printable(line)}", style=style, markup=False, highlight=False)


def diff_view(diff: Any, usage: bool = False) -> None:
    usage_only = [c for c in diff.changes if c.usage_only]
    shown = [c for c in diff.changes if usage or not c.usage_only]
    head = (f"[bold]{diff.old[:10]}..{diff.new[:10]}[/bold]: {diff.count('added')} added, "
            f"{diff.count('removed')} removed, {diff.count('changed')} changed")
    if diff.params:
        head += f", {len(diff.params)} parametric memor{'y' if len(diff.params) == 1 else 'ies'}"
    if usage_only and not usage:
        head += f" [dim](and access counts of {len(usage_only)} units; --usage lists them)[/dim]"
    console.print(head, highlight=False)
    for c in shown:
        if c.change == "added":
            console.print(f"[green]+ {safe(c.id)}[/green] {safe(f'[{c.new.kind}]')} {_cell(c.new.text)}",
                          highlight=False)
        elif c.change == "removed":
            console.print(f"[red]- {safe(c.id)}[/red] {safe(f'[{c.old.kind}]')} {_cell(c.old.text)}",
                          highlight=False)
        else:
            versions = f" version {c.old.version} -> {c.new.version}" if c.old.version != c.new.version else ""
            console.print(f"[yellow]~ {safe(c.id)}[/yellow]{versions}", highlight=False)
            old, new = c.old.to_json(), c.new.to_json()
            for name in c.fields:
                if name in TIME_FIELDS:
                    console.print(f"    {name}: {local_time(old[name]) or 'null'} -> {local_time(new[name]) or 'null'}",
                                  markup=False, highlight=False)
                elif name != "text":
                    console.print(f"    {name}: {printable(_value(old[name]))} -> {printable(_value(new[name]))}",
                                  markup=False, highlight=False)
            if "text" in c.fields:
                console.print("    text:")
                _text_lines(c.text_diff(), "      ")
    for p in diff.params:
        record = p.new if p.new is not None else p.old
        label = f"parametric memory {p.name} [{record.get('kind', '?')}]"
        if p.change == "added":
            console.print(f"[green]+ {safe(label)}[/green]", highlight=False)
        elif p.change == "removed":
            console.print(f"[red]- {safe(label)}[/red]", highlight=False)
        else:
            console.print(f"[yellow]~ {safe(label)}[/yellow]", highlight=False)
            for name in p.fields:
                console.print(f"    {name}: {printable(_value(p.old.get(name)))} -> {printable(_value(p.new.get(name)))}",
                              markup=False, highlight=False)


def versions_view(versions: list[Any]) -> None:
    for v in versions:
        c = v.commit
        when = c.when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        unit = v.unit
        label = f"v{unit.version} {unit.status}" if unit else "removed"
        fields = [f for f in v.fields if f not in ("updated_at", "version")]
        what = "created" if not v.fields else ", ".join(fields) or "touched"
        console.print(f"[yellow]{c.sha[:10]}[/yellow] {when} {safe(c.to_json()['user'])} [bold]{safe(c.op)}[/bold] "
                      f"{safe(label)}: {safe(what)}", highlight=False)
        if unit and (not v.fields or "text" in v.fields or "restored" in v.fields):
            for line in unit.text.splitlines() or [""]:
                console.print(f"    {printable(line)}", markup=False, highlight=False)


def check_view(report: Any) -> None:
    for line in report.repaired:
        console.print(f"[green]repaired:[/green] {safe(line)}", highlight=False)
    for p in report.problems:
        state = "[green]fixed[/green]" if p.fixed else "[red]problem[/red]"
        hint = " (memos check --repair fixes it)" if p.fixable and not p.fixed else ""
        console.print(f"{state} {safe(f'[{p.area}]')} {safe(p.message)}{hint}", highlight=False)
    if report.ok:
        learned = f" and {report.params} parametric memories" if report.params else ""
        console.print(f"[green]ok[/green]: {report.units} units{learned} at {safe(str(report.head)[:10])}, the search "
                      f"table ({report.rows} rows), embeddings and indexes are in step", highlight=False)


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
        status = f"[{style}]{safe(a.status)}[/{style}]" if style else safe(a.status)
        if a.reason and a.status != "current":
            status += f" [dim]({safe(a.reason)})[/dim]"
        table.add_row(safe(a.id), safe(a.cube), safe(a.selection.describe()), str(len(a.sources)), str(a.n_tokens),
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
        table.add_row(key, local_time(value) if key == "created_at" else safe(value))
    table.add_row("model", safe(f"{model.get('name')} ({model.get('arch')}), sha256 {model.get('sha256')}, "
                                f"ctx {model.get('n_ctx')}"))
    table.add_row("units", safe(", ".join(f"{u['id']} v{u['version']}" for u in units)))
    console.print(table)
    if with_text:
        console.print()
        console.print(printable(record.preamble), markup=False, highlight=False)


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
            status = f"[{style}]{safe(a.status)}[/{style}]" + (f" [dim]({safe(a.note)})[/dim]" if a.note else "")
            units = " ".join(a.units) if len(a.units) <= 6 else " ".join(a.units[:5]) + f" … (+{len(a.units) - 5})"
            table.add_row(safe(a.action), safe(a.cube), safe(units), safe(a.reason), status)
        console.print(table)
    for line in report.maintenance:
        console.print(f"[dim]{safe(line)}[/dim]")
    for p in report.parametric:
        hint = (f"; `memos learn {p['name']} ... --replace` or [consolidate.parametric] relearn = true"
                if p["action"] == "reported" and p["kind"] == "lora" else "")
        console.print(f"parametric memory {safe(p['name'])} is {safe(p['status'])} ({safe(p['reason'])}): "
                      f"{safe(p['action'])}{safe(hint)}")
    commit = f" (commit {report.commit[:10]})" if report.commit else ""
    mode = f" ({report.mode}: only what changed since the last run)" if report.mode == "incremental" else ""
    console.print(f"{safe(report.summary())}{commit} in {report.seconds:.1f}s{mode}")


_PARAM_STATUS_STYLE = {"current": "green", "stale": "yellow", "other model": "yellow"}
_PARAM_WIDTHS = {"kind": 5, "on": 3, "scale": 5, "status": 11, "units": 5, "size": 7, "created": 10}  # the name gives way


def _param_status(status: str, reason: str) -> str:
    style = _PARAM_STATUS_STYLE.get(status, "")
    shown = f"[{style}]{safe(status)}[/{style}]" if style else safe(status)
    return shown + (f" [dim]({safe(reason)})[/dim]" if reason and status != "current" else "")


def param_table(rows: list[dict[str, Any]]) -> None:
    """``memos param list``: rows as ``param list --json`` gives them."""
    if not rows:
        console.print("[dim]no parametric memories; make one with `memos learn NAME` or `memos steer NAME`[/dim]")
        return
    # Light borders, so that the columns fit 80 characters; `param show` has the cube, the model and the rest.
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "kind", "on", "scale", "status", "units", "size", "created"):
        table.add_column(col, overflow="fold" if col == "name" else "ellipsis", no_wrap=col != "name",
                         min_width=_PARAM_WIDTHS.get(col),
                         justify="right" if col in ("scale", "units", "size") else "left")
    for r in rows:
        size = "missing" if r["bytes"] is None else human_bytes(r["bytes"])
        table.add_row(safe(r["name"]), safe(r["kind"]), "yes" if r["enabled"] else "no",
                      f"{r['scale']:g}", _param_status(r["status"], ""), str(len(r["sources"])), size,
                      _short_time(r["created_at"]))
    console.print(table)
    for r in rows:  # why, below the table: a reason is too long for a cell
        if r["reason"] and r["status"] != "current":
            console.print(f"[dim]{safe(r['name'])}: {safe(r['status'])}: {safe(r['reason'])}[/dim]", highlight=False)


def param_detail(row: dict[str, Any]) -> None:
    """``memos param show``: every field of the record, the blob's size and the status."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    model = row["model"]
    for key, value in row.items():
        if key in ("model", "sources", "reason"):
            continue
        if key == "status":
            table.add_row(key, _param_status(value, row["reason"]))
        elif key == "bytes":
            table.add_row("size", "missing" if value is None else f"{human_bytes(value)} ({value} bytes)")
        elif key == "created_at":
            table.add_row(key, local_time(value))
        elif value is None or value in ({}, ""):
            continue
        else:
            table.add_row(key, safe(_value(value)))
    table.add_row("model", safe(f"{model.get('name') or '?'} ({model.get('arch') or '?'}, {model.get('n_layer')} layers, "
                                f"width {model.get('n_embd')}), sha256 {model.get('sha256')}"))
    sources = row["sources"]
    table.add_row("sources", safe(", ".join(f"{s['id']} v{s['version']}" for s in sources)) if sources else "[dim]none[/dim]")
    console.print(table)
