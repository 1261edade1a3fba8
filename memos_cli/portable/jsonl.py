"""memos's own JSON-lines export: a header line, then one unit per line with every field.

The header (``{"memos_export": 1, ...}``) says which format and store schema
wrote the file, how many units follow and which embedding model made their
vectors, when they are included (``--vectors``). ``memos import`` reads the
file back into units with the same ids, times, versions, tags, meta, sources
and pins (``MemoryStore.import_units``); a file from a newer memos is
refused by its header, before anything is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MemoryUnit, iso, loads_strict, utcnow
from memos_cli.store.config import SCHEMA_VERSION

EXPORT_FORMAT = 1  # of the header and lines; a reader refuses a higher one
HEADER_KEY = "memos_export"


def header(count: int, *, model: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {HEADER_KEY: EXPORT_FORMAT, "store_schema": SCHEMA_VERSION, "exported_at": iso(utcnow()), "units": count,
            "embedding_model": model, **(extra or {})}


def unit_record(unit: MemoryUnit, vectors: bool = False) -> dict[str, Any]:
    """A unit's line: every field; the vector and its model only when asked (derived data)."""
    data = unit.to_json()
    data.pop("model", None)
    if vectors and unit.vector is not None:
        # Nine significant digits hold a float32 exactly (the table's type), in about half the characters.
        data["vector"] = [float(f"{x:.9g}") for x in unit.vector]
        data["model"] = unit.model
    return data


def write(out: IO[str], units: Iterable[MemoryUnit], count: int, *, vectors: bool = False,
          model: str | None = None) -> int:
    """Write the header and the units; returns the number written."""
    out.write(json.dumps(header(count, model=model if vectors else None), ensure_ascii=False) + "\n")
    n = 0
    for unit in units:
        out.write(json.dumps(unit_record(unit, vectors), ensure_ascii=False) + "\n")
        n += 1
    return n


def check_header(data: object, where: str) -> dict[str, Any]:
    """The header of a memos export or pack, refused when a newer memos wrote it."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected memos's export header, a JSON object")
    fmt, schema = data.get(HEADER_KEY, data.get("memos_pack")), data.get("store_schema")
    if isinstance(fmt, bool) or not isinstance(fmt, int) or isinstance(schema, bool) or not isinstance(schema, int):
        raise UsageError(f"{where}: a memos export header needs whole numbers for its format and store_schema")
    if fmt > EXPORT_FORMAT or schema > SCHEMA_VERSION:
        raise UsageError(f"{where}: written by a newer memos (export format {fmt}, store schema {schema}; this memos "
                         f"reads up to {EXPORT_FORMAT} and {SCHEMA_VERSION}); upgrade memos to import it")
    return data


def is_export(first_line: str) -> bool:
    """Does this first line look like memos's export header?"""
    try:
        data = json.loads(first_line)
    except ValueError:
        return False
    return isinstance(data, dict) and HEADER_KEY in data


def parse_unit(data: object, where: str) -> MemoryUnit:
    """One unit's line (or record) into a unit, its vector kept when it has one."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a unit, a JSON object")
    fields = dict(data)
    vector = fields.pop("vector", None)
    model = fields.pop("model", None)
    try:
        unit = MemoryUnit.from_json(fields)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if vector is not None:
        if not isinstance(vector, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            raise UsageError(f"{where}: bad vector: use a list of numbers")
        unit.vector, unit.model = [float(x) for x in vector], str(model or "")
    return unit


def read(lines: Iterator[tuple[int, str]], name: str) -> tuple[dict[str, Any], list[MemoryUnit], list[str]]:
    """(header, units, where each unit was) from a memos export's numbered lines."""
    head: dict[str, Any] | None = None
    units: list[MemoryUnit] = []
    wheres: list[str] = []
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{name}: line {lineno}"
        try:
            data = loads_strict(line)
        except ValueError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc})") from None
        if head is None:
            head = check_header(data, where)
            continue
        units.append(parse_unit(data, where))
        wheres.append(where)
    if head is None:
        raise UsageError(f"{name}: empty; expected memos's export header on its first line")
    expected = head.get("units")
    if isinstance(expected, int) and expected != len(units):
        raise UsageError(f"{name}: its header says {expected} units but it holds {len(units)}; the file is cut short "
                         "or damaged, and nothing was imported")
    return head, units, wheres
