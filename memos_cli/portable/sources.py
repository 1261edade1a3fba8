"""What ``memos import`` was given, and how to read it: JSON lines, memos's own exports, other tools' files.

Detected from the content (``--from`` names it instead):

- ``jsonl``: JSON lines of new memories (``{"text", ...}``), memos's long-standing import;
- ``memos``: memos's own export, JSON lines with its header line or a Markdown folder
  (``portable.jsonl``, ``portable.markdown``): whole units, merged by id;
- ``pack``: a pack (``portable.pack``): whole units and parametric memories, merged by id;
- ``mem0``, ``letta``, ``markdown``, ``chatgpt``, ``claude``: other tools' exports
  (``portable.foreign``), read into new memories.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MemoryUnit, iter_json_lines

NATIVE = ("jsonl", "memos", "pack")
FOREIGN = ("mem0", "letta", "markdown", "chatgpt", "claude")
FORMATS = NATIVE + FOREIGN


@dataclass
class Source:
    """An import's input: ``records`` of new memories, or whole ``units`` to merge by id."""

    format: str
    records: Iterator[tuple[int | str, Any]] | None = None
    total: int = 0  # records, for a progress bar
    units: list[MemoryUnit] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    parametric: list[tuple[Any, bytes]] = field(default_factory=list)

    @property
    def whole_units(self) -> bool:
        return self.records is None


def read_input(source: str, what: str = "input") -> str:
    """The text of FILE, or of stdin for '-', strictly as UTF-8 (the commands' file arguments)."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such file: {source}") from None
    except IsADirectoryError:
        raise UsageError(f"{source} is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"cannot read {source}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        name = "stdin" if source == "-" else source
        raise UsageError(f"{what} from {name} is not valid UTF-8 (byte {exc.start})") from None


def detect(source: str) -> str:
    """The format of ``source`` (a file, a folder, or '-' for stdin: JSON lines only)."""
    from memos_cli.portable import markdown, pack

    if source == "-":
        return "jsonl"  # open_source tells a memos export on stdin by its first line
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"no such file or folder: {source}")
    if path.is_dir() or path.suffix.lower() == ".md":
        if markdown.is_export(path):
            return "memos"
        from memos_cli.portable import foreign

        return foreign.detect(path) or _unknown(source)
    if pack.is_pack(path):
        return "pack"
    first = _first_line(path)
    if first is not None:
        from memos_cli.portable import jsonl

        if jsonl.is_export(first):
            return "memos"
        if _is_record_line(first):
            return "jsonl"
    from memos_cli.portable import foreign

    found = foreign.detect(path)
    if found:
        return found
    if first is not None and first.lstrip().startswith("{"):
        return "jsonl"  # read as memos's JSON lines: a bad line is then named by its number
    return _unknown(source)


def _is_record_line(line: str) -> bool:
    """A JSON-lines record of memos's import: one object with a "text" on the first line."""
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "text" in data


def _unknown(source: str) -> str:
    raise UsageError(f"{source}: not a format memos imports (JSON lines, a memos export or pack, or an export of "
                     f"{', '.join(FOREIGN)}); name it with --from")


def _first_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in head.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line
    return None


def open_source(source: str, fmt: str | None = None) -> Source:
    """Read ``source`` as ``fmt`` (None: detected). Everything is read and checked here, before
    the store is touched; a bad entry is a ``UsageError`` naming the format and the entry."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"bad --from {fmt!r}: use one of {', '.join(FORMATS)}")
    if source == "-" and fmt not in (None, "jsonl", "memos"):
        raise UsageError(f"--from {fmt} reads a file or folder, not stdin")
    text = read_input(source) if source == "-" else None  # stdin is read once, and told apart by its first line
    if fmt is None and text is not None:
        from memos_cli.portable import jsonl

        first = next((line for line in text.split("\n") if line.strip()), "")
        fmt = "memos" if jsonl.is_export(first) else "jsonl"
    fmt = fmt or detect(source)
    path = Path(source).expanduser()
    if fmt == "jsonl":
        text = read_input(source) if text is None else text
        return Source(fmt, records=iter_json_lines(text), total=sum(1 for line in text.split("\n") if line.strip()))
    if fmt == "memos":
        from memos_cli.portable import jsonl, markdown

        if source != "-" and (path.is_dir() or path.suffix.lower() == ".md"):
            units, wheres = markdown.read(path)
        else:
            name = "stdin" if source == "-" else path.name
            text = read_input(source) if text is None else text
            _, units, wheres = jsonl.read(enumerate(text.split("\n"), 1), name)
        return Source(fmt, units=units, wheres=wheres)
    if fmt == "pack":
        from memos_cli.portable import pack

        if not path.is_file():
            raise UsageError(f"no such file: {source}")
        got = pack.read(path)
        return Source(fmt, units=got.units, wheres=got.wheres, parametric=got.parametric)
    from memos_cli.portable import foreign

    if not path.exists():
        raise UsageError(f"no such file or folder: {source}")
    records = list(foreign.read(path, fmt))  # all of it read and checked before the store is touched
    if not records:
        raise UsageError(f"{source}: no memories found in this {fmt} export")
    return Source(fmt, records=iter(records), total=len(records))
