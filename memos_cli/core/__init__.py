"""The memory OS as a Python API, with no command-line code in it.

    from memos_cli.core import MemoryStore, Filters

    store = MemoryStore("~/.memos")
    unit = store.add("Alice moved to Lisbon", kind="fact", tags=["alice"])
    for hit in store.recall("where does Alice live?", k=3, filters=Filters(kind="fact")):
        print(hit.score, hit.unit.text)

``Filters`` and ``Hit`` load Lance and NumPy, so they are imported on first use.
"""

from __future__ import annotations

from typing import Any

from .config import SCHEMA_VERSION, StoreConfig, resolve_store_path
from .errors import LockedError, MemosError, ModelError, NotFoundError, StoreError, UsageError
from .policy import ConsolidatePolicy
from .store import MemoryStore, Transaction
from .units import MemoryUnit, build_unit, parse_duration, parse_time

__all__ = [
    "SCHEMA_VERSION", "ConsolidatePolicy", "Filters", "Hit", "LockedError", "MemoryStore", "MemoryUnit", "MemosError",
    "ModelError", "NotFoundError", "StoreConfig", "StoreError", "Transaction", "UsageError", "build_unit",
    "parse_duration", "parse_time", "resolve_store_path",
]


def __getattr__(name: str) -> Any:
    if name in ("Filters", "Hit"):
        from . import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
