"""What the chat model reads: the instructions, the block of memory in the
head (the part an activation memory caches), and this turn's recalled
memories within a token budget.

Rendering is deterministic: the same units in the same order give the same
text, which is what lets a saved KV cache stand for a head.
"""

from __future__ import annotations

from collections.abc import Callable

from memos_cli.plaintext.units import MemoryUnit

INSTRUCTIONS = (
    "You are a helpful assistant with a long-term memory. The memories below were saved "
    "earlier by the user or from past conversations. Use them when they are relevant, "
    "say so when they do not answer the question, and answer briefly."
)
HEAD_TITLE = "What you know:"
RECALLED_TITLE = "Memories that may be relevant:"


def memory_line(unit: MemoryUnit) -> str:
    """One memory as the model sees it: its date and its text on one line."""
    when = unit.time or unit.created_at
    date = when.strftime("%Y-%m-%d") if when else "undated"
    text = " ".join(unit.text.split())
    return f"- [{date}] {text}"


def head_text(units: list[MemoryUnit]) -> str:
    """The head: instructions, then the block of memory (when there is one)."""
    if not units:
        return INSTRUCTIONS
    return INSTRUCTIONS + "\n\n" + HEAD_TITLE + "\n" + "\n".join(memory_line(u) for u in units)


def recalled_block(units: list[MemoryUnit], budget: int, count: Callable[[str], int]) -> tuple[str, list[MemoryUnit]]:
    """This turn's memories, best first, as many as fit in ``budget`` tokens.

    Returns the text and the units it holds. A memory that does not fit is
    skipped and a shorter one after it may still go in.
    """
    used: list[MemoryUnit] = []
    lines: list[str] = []
    spent = count(RECALLED_TITLE) + 1
    for unit in units:
        line = memory_line(unit)
        cost = count(line) + 1
        if spent + cost > budget:
            continue
        spent += cost
        lines.append(line)
        used.append(unit)
    if not lines:
        return "", []
    return RECALLED_TITLE + "\n" + "\n".join(lines), used
