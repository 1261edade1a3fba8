"""memos's own Markdown export: a folder of one file per unit, every field in YAML front matter.

Each file is ``<id>-<a few words>.md``: the front matter (``memos_export: 1``
and every field of the unit but its text) and then the text as the body, so
the folder reads in any editor or notes app. Front matter is written and
read by python-frontmatter (PyYAML underneath); times are ISO 8601 strings.
A body is read back as it was written; a text with leading or trailing
blank space, which front matter parsers trim, is also kept whole in a
``text`` key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import MemoryUnit
from memos_cli.portable.jsonl import EXPORT_FORMAT, HEADER_KEY, check_header, parse_unit
from memos_cli.store.config import SCHEMA_VERSION

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def file_name(unit: MemoryUnit) -> str:
    words = _SLUG_RE.sub("-", unit.text[:60].lower()).strip("-")[:40].rstrip("-")
    return f"{unit.id}-{words}.md" if words else f"{unit.id}.md"


def dumps(unit: MemoryUnit) -> str:
    import frontmatter

    meta: dict[str, Any] = {HEADER_KEY: EXPORT_FORMAT, "store_schema": SCHEMA_VERSION}
    data = unit.to_json()
    data.pop("model", None)
    text = data.pop("text")
    meta.update(data)
    if text != text.strip() or not text.strip():
        meta["text"] = text
    return frontmatter.dumps(frontmatter.Post(text, **meta), sort_keys=False) + "\n"


def write(folder: Path, units: Iterable[MemoryUnit]) -> int:
    """Write the units' files into ``folder`` (made if missing, which must hold no .md file yet)."""
    folder.mkdir(parents=True, exist_ok=True, mode=files.DIR_MODE)
    if any(folder.glob("*.md")):
        raise UsageError(f"{folder} already holds Markdown files; export into a new or empty folder")
    n = 0
    for unit in units:
        files.write_private(folder / file_name(unit), dumps(unit).encode("utf-8"))
        n += 1
    return n


def is_export(path: Path) -> bool:
    """Is this a folder (or file) of memos's Markdown export? Looks at the first .md file's front matter."""
    first = next(iter(md_files(path)), None)
    if first is None:
        return False
    try:
        head = first.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return head.startswith("---") and f"\n{HEADER_KEY}:" in head


def md_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = []
    for dirpath, dirnames, names in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in sorted(names) if n.endswith(".md")]
    return found


def read(path: Path) -> tuple[list[MemoryUnit], list[str]]:
    """The units of a memos Markdown export (a folder, or one of its files), and where each was."""
    import frontmatter
    import yaml

    units, wheres = [], []
    for file in md_files(path):
        where = str(file.relative_to(path)) if file != path else file.name
        try:
            post = frontmatter.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where}: cannot be read ({exc})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{where}: its front matter is not valid YAML ({' '.join(str(exc).split())})") from None
        meta = dict(post.metadata)
        if HEADER_KEY not in meta:
            raise UsageError(f"{where}: expected a memos Markdown export (front matter with {HEADER_KEY}); "
                             "for other notes use --from markdown")
        check_header(meta, where)
        meta.pop(HEADER_KEY)
        meta.pop("store_schema", None)
        meta.setdefault("text", post.content)
        units.append(parse_unit(_plain(meta), where))
        wheres.append(where)
    if not units:
        raise UsageError(f"{path}: no Markdown files in it")
    return units, wheres


def _plain(value: Any) -> Any:
    """YAML's dates and times as ISO strings (a hand-edited file may have unquoted ones)."""
    import datetime as dt

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat() + "T00:00:00+00:00"
    return value
