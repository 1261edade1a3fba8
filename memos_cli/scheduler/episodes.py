"""Old conversation turns, grouped for the scheduler to summarise.

An ``episode`` unit is one turn of a conversation. The turns of one session
are those with the same ``meta.session`` (``memos chat`` writes it); failing
that, the same explicit ``time`` (a session imported with its time, as recall's
context uses it); failing that, the same day. A session is summarised when at
least ``min_episodes`` of its turns are older than the cutoff; a session too
long for the model's context is summarised in consecutive parts.

Pure: no store I/O and no model; the scheduler gives the token counter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from memos_cli.plaintext.units import MemoryUnit, iso


@dataclass
class Session:
    label: str  # for messages: 'session 3f2a', 'the conversation of 2023-05-08T13:56:00Z', 'day 2026-01-04'
    turns: list[MemoryUnit]  # in the order they were remembered


def session_key(unit: MemoryUnit) -> tuple[str, str]:
    session = unit.meta.get("session")
    if isinstance(session, str) and session:
        return ("session", session)
    if unit.time is not None and unit.time != unit.created_at:
        return ("the conversation of", iso(unit.time) or "")
    when = unit.created_at or unit.time
    return ("day", when.date().isoformat() if when else "?")


def sessions(units: list[MemoryUnit], cutoff: datetime, min_episodes: int) -> list[Session]:
    """The sessions of old ``episode`` units with at least ``min_episodes`` turns, oldest first."""
    groups: dict[tuple[str, str], list[MemoryUnit]] = {}
    for unit in units:
        when = unit.time or unit.created_at
        if unit.kind == "episode" and unit.status == "active" and when is not None and when < cutoff:
            groups.setdefault(session_key(unit), []).append(unit)
    found = [Session(f"{kind} {name}", sorted(turns, key=lambda u: u.id))
             for (kind, name), turns in groups.items() if len(turns) >= min_episodes]
    return sorted(found, key=lambda s: s.turns[0].id)


def fit(turns: list[MemoryUnit], count: Callable[[str], int], budget: int) -> list[list[MemoryUnit]]:
    """Consecutive parts of a session whose transcript fits ``budget`` tokens each."""
    parts: list[list[MemoryUnit]] = [[]]
    used = 0
    for turn in turns:
        size = count(turn.text) + 1
        if parts[-1] and used + size > budget:
            parts.append([])
            used = 0
        parts[-1].append(turn)
        used += size
    return parts


def summary_prompt(turns: list[MemoryUnit]) -> str:
    """A prompt a small base model continues with a summary of these turns."""
    transcript = "\n".join(turn.text.strip() for turn in turns)
    return (
        "Below is a conversation, then a short summary of it that keeps every name, date, place and "
        "decision.\n\n"
        f"Conversation:\n{transcript}\n\n"
        "Summary:"
    )
