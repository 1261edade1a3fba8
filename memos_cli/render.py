"""Rich rendering of units, hits and stats for people; JSON is in the commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
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


def hits_table(hits: list[Any], query: str) -> None:
    if not hits:
        console.print(f"[dim]nothing recalled for {query!r}[/dim]")
        return
    table = Table(header_style="bold")
    for col in ("score", "id", "time", "kind", "text"):
        table.add_column(col, overflow="fold" if col == "text" else "ellipsis", no_wrap=col != "text")
    for h in hits:
        table.add_row(f"{h.score:.4f}", h.unit.id, _short_time(h.unit.time), h.unit.kind, _clip(h.unit.text, 140))
    console.print(table)


def unit_detail(unit: MemoryUnit) -> None:
    data = unit.to_json()
    text = data.pop("text")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        if value in (None, [], {}, ""):
            continue
        table.add_row(key, str(value))
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
