"""Evaluating an adapter on probe questions, with and without it, as ``memos chat --no-recall`` answers.

Probe lines are JSON: ``{"q": ..., "a": ...}`` asks a question whose answer
should contain ``a``; ``{"q": ...}`` alone (or ``{"unrelated": ...}``) asks an
unrelated question, whose greedy answer should not change. A *leak* is an
unrelated answer that, with the adapter, contains one of the answers it
learned (or a probe's ``a``) when the untouched model's answer did not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import UsageError

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator

MAX_TOKENS = 32


def read_probes(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(answerable (q, a) pairs, unrelated questions) from a JSON-lines file."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read probe file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    answerable: list[tuple[str, str]] = []
    unrelated: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise UsageError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(item, dict):
            raise UsageError(f"{path}:{n}: not a JSON object")
        q = item.get("q", item.get("question", item.get("unrelated")))
        a = item.get("a", item.get("answer"))
        if not isinstance(q, str) or not q.strip():
            raise UsageError(f'{path}:{n}: no question ("q")')
        if a is None or "unrelated" in item:
            unrelated.append(q.strip())
        elif isinstance(a, str) and a.strip():
            answerable.append((q.strip(), a.strip()))
        else:
            raise UsageError(f'{path}:{n}: the answer ("a") is not text')
    if not answerable and not unrelated:
        raise UsageError(f"{path} has no probes")
    return answerable, unrelated


def evaluate(generator: Generator, adapter: Any, route: Callable[[str], bool], answerable: list[tuple[str, str]],
             unrelated: list[str], learned_answers: list[str],
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Ask every probe without the adapter and with it where routing applies it."""
    from memos_cli.parametric.learn import Teacher

    teacher = Teacher(generator)

    def ask(question: str, use: bool) -> str:
        generator.use_loras([(adapter, 1.0)] if use else [])
        tokens = teacher.question(question)
        return "".join(generator.stream(tokens, temperature=0.0, max_tokens=MAX_TOKENS)).strip()

    total = len(answerable) + len(unrelated)
    done = 0
    base_right = routed_right = routed_answerable = 0
    details: list[dict[str, Any]] = []
    for q, a in answerable:
        use = route(q)
        base = ask(q, False)
        with_adapter = ask(q, True) if use else base
        base_right += a.lower() in base.lower()
        routed_right += a.lower() in with_adapter.lower()
        routed_answerable += use
        details.append({"q": q, "a": a, "routed": use, "base": base, "answer": with_adapter})
        done += 1
        if progress:
            progress("evaluating", done, total)
    needles = [x.lower() for x in {*learned_answers, *(a for _, a in answerable)} if x.strip()]
    unchanged = leaks = routed_unrelated = 0
    for q in unrelated:
        use = route(q)
        base = ask(q, False)
        with_adapter = ask(q, True) if use else base
        unchanged += with_adapter == base
        leak = any(n in with_adapter.lower() and n not in base.lower() for n in needles)
        leaks += leak
        routed_unrelated += use
        details.append({"q": q, "routed": use, "base": base, "answer": with_adapter, "leak": leak})
        done += 1
        if progress:
            progress("evaluating", done, total)
    generator.use_loras([])
    return {
        "answerable": len(answerable), "answered_base": base_right, "answered": routed_right,
        "routed_answerable": routed_answerable,
        "unrelated": len(unrelated), "unrelated_unchanged": unchanged, "routed_unrelated": routed_unrelated,
        "leaks": leaks, "details": details,
    }
