"""The text form of a unit that a person edits in ``$EDITOR``.

A TOML header with the editable fields, a ``+++`` line, then the text as it
is (several lines are fine)::

    # Editing memory 01m7yeatpz160h (version 2). ...
    kind = "fact"
    tags = ["alice"]
    importance = 0.5
    time = 2024-05-08T13:56:00Z
    [meta]
    source = "chat"
    +++
    Alice lives in Lisbon

Lines starting with ``#`` before ``+++`` are comments. A file emptied of all
but comments cancels the edit, as with ``git commit``.
"""

from __future__ import annotations

import tomllib
from datetime import date, datetime
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MemoryUnit, check_importance, check_meta, check_name, check_tags, check_text, parse_time

SEPARATOR = "+++"
TIMES = ("time", "valid_from", "valid_to", "expires_at")


def render(unit: MemoryUnit) -> str:
    import tomli_w

    header: dict[str, Any] = {"kind": unit.kind, "tags": unit.tags, "importance": unit.importance}
    absent = []
    for name in TIMES:
        value = getattr(unit, name)
        if value is None:
            absent.append(name)
        else:
            header[name] = value.replace(microsecond=0) if value.microsecond == 0 else value
    header["meta"] = unit.meta
    lines = [
        f"# Editing memory {unit.id} (version {unit.version}, cube {unit.cube}).",
        "# The fields are TOML; the text of the memory follows the +++ line.",
        "# Save and quit to commit the change; remove everything to cancel.",
        *[f"# {name} = 2025-01-31T09:00:00Z   (not set)" for name in absent],
        tomli_w.dumps(header).rstrip("\n"),
        SEPARATOR,
        unit.text,
    ]
    return "\n".join(lines) + "\n"


def parse(document: str) -> dict[str, Any] | None:
    """The fields of an edited document, validated; None when the edit was cancelled."""
    if not any(line.strip() and not line.startswith("#") for line in document.splitlines()):
        return None
    head, sep, text = document.partition("\n" + SEPARATOR + "\n")
    if not sep:
        if document.rstrip("\n").endswith("\n" + SEPARATOR):
            head, text = document.rstrip("\n")[: -len(SEPARATOR) - 1], ""
        else:
            raise UsageError(f"the edited memory has no '{SEPARATOR}' line before its text")
    try:
        header = tomllib.loads(head)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"the edited fields are not valid TOML ({exc})") from None
    unknown = sorted(set(header) - {"kind", "tags", "importance", "meta", *TIMES})
    if unknown:
        raise UsageError(f"{unknown[0]!r} cannot be edited")
    if text.endswith("\n"):
        text = text[:-1]
    changes: dict[str, Any] = {"text": check_text(text)}
    if "kind" in header:
        changes["kind"] = check_name(header["kind"], "kind")
    if "tags" in header:
        changes["tags"] = check_tags(header["tags"])
    if "importance" in header:
        changes["importance"] = check_importance(header["importance"])
    changes["meta"] = check_meta(header.get("meta", {}))
    for name in TIMES:
        value = header.get(name)
        if isinstance(value, date) and not isinstance(value, datetime):
            value = value.isoformat()  # a TOML date: midnight, local time
        if value is not None and not isinstance(value, (str, datetime)):
            raise UsageError(f"bad {name} {value!r}: use a TOML date-time like 2025-01-31T09:00:00Z")
        changes[name] = parse_time(value, name) if value is not None else None
    if changes.get("time") is None:
        changes.pop("time")  # a unit always has a time; removing it keeps the old one
    return changes
