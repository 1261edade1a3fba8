"""memos: a local-first memory operating system for language models.

The Python API that scripts import, with no command-line code in it::

    from memos_cli import Filters, MemoryStore

    store = MemoryStore("~/.memos")
    unit = store.add("Alice moved to Lisbon in March 2023.", kind="fact", tags=["alice"])
    for hit in store.recall("Where does Alice live?", k=3, filters=Filters(kind="fact")):
        print(f"{hit.score:.2f} {hit.unit.text}")
    store.pin([unit.id])
    print(store.get(unit.id).pinned)

Every write (``add``, ``import_records``, ``edit``, ``forget``, ``pin``,
``rollback``, ``set_config``) is one git commit of the store, or nothing;
``recall`` and ``list`` read. Errors are ``MemosError``s (``UsageError``,
``NotFoundError``, ``StoreError``, ``LockedError``, ``ModelError``).

The package, by layer (each imports only from the layers below it):

- ``cli``: the ``memos`` command (Typer, rich): parses, calls the rest, renders;
- ``chat``, ``scheduler``: the services: a chat session with memory, and
  ``memos consolidate`` (merge, supersede, expire, summarise, promote, demote);
- ``activation``, ``parametric``: memory made from the store's units: KV
  caches of a block of memory (and, to come, LoRA adapters and steering vectors);
- ``store``: the memory directory: one git repository, written one
  transaction at a time under a lock, with its journal, access counts,
  memos.toml, the search table following HEAD, check, purge and history;
- ``plaintext``: what a memory is (``MemoryUnit``, its file), the search
  table (Lance) and recall over it;
- ``models``: llama.cpp: embeddings, generation, the models' files;
- ``errors``: the errors of every layer.

Names are loaded on first use, so that ``import memos_cli`` (which every
``memos`` command does) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MemoryStore": "memos_cli.store.store",
    "Transaction": "memos_cli.store.commit",
    "StoreConfig": "memos_cli.store.config",
    "SCHEMA_VERSION": "memos_cli.store.config",
    "resolve_store_path": "memos_cli.store.config",
    "ConsolidatePolicy": "memos_cli.store.policy",
    "MemoryUnit": "memos_cli.plaintext.units",
    "build_unit": "memos_cli.plaintext.units",
    "parse_duration": "memos_cli.plaintext.units",
    "parse_time": "memos_cli.plaintext.units",
    "Filters": "memos_cli.plaintext.retrieval",
    "Hit": "memos_cli.plaintext.retrieval",
    **{name: "memos_cli.errors" for name in ("MemosError", "UsageError", "NotFoundError", "StoreError",
                                              "LockedError", "ModelError")},
}
__all__ = [
    "SCHEMA_VERSION", "ConsolidatePolicy", "Filters", "Hit", "LockedError", "MemoryStore", "MemoryUnit", "MemosError",
    "ModelError", "NotFoundError", "StoreConfig", "StoreError", "Transaction", "UsageError", "build_unit",
    "parse_duration", "parse_time", "resolve_store_path",
]

if TYPE_CHECKING:
    from memos_cli.errors import LockedError, MemosError, ModelError, NotFoundError, StoreError, UsageError
    from memos_cli.plaintext.retrieval import Filters, Hit
    from memos_cli.plaintext.units import MemoryUnit, build_unit, parse_duration, parse_time
    from memos_cli.store.commit import Transaction
    from memos_cli.store.config import SCHEMA_VERSION, StoreConfig, resolve_store_path
    from memos_cli.store.policy import ConsolidatePolicy
    from memos_cli.store.store import MemoryStore


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
