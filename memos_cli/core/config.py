"""Where the store lives and what its ``memos.toml`` says."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StoreError

# Version of the on-disk layout (unit files and config). A store written by
# a newer version is refused rather than misread; an older one is migrated.
# 1: the LanceDB table in git; 2: one JSON file per unit; 3: units may be
# ``pinned`` (a field schema 2 would reject as unknown).
SCHEMA_VERSION = 3
CONFIG_NAME = "memos.toml"


def resolve_store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--store DIR``, else ``$MEMOS_HOME``, else ``~/.memos``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MEMOS_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".memos"


@dataclass
class StoreConfig:
    """The settings in ``memos.toml``."""

    schema_version: int = SCHEMA_VERSION
    embedding_model: str = "all-MiniLM-L6-v2"  # the default, or a path to a GGUF
    lock_timeout: float = 10.0  # seconds a writer waits for another
    recall_k: int = 10
    chat_model: str | None = None  # a path to a GGUF chat model; None: Gemma 3 270M from its package
    chat_ctx: int | None = None  # the chat's context size in tokens; None: 8192
    extra: dict[str, Any] = field(default_factory=dict)  # sections we do not know, kept as they are

    @classmethod
    def load(cls, path: Path) -> StoreConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{path.parent} is not a memos store (no {CONFIG_NAME})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: not valid TOML ({exc})") from None
        store = data.get("store", {})
        version = store.get("schema_version")
        if not isinstance(version, int):
            raise StoreError(f"{path}: [store] schema_version is missing")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"this store was written by a newer memos (schema {version}, this memos reads up to "
                f"{SCHEMA_VERSION}); upgrade memos to use it"
            )
        embedding = data.get("embedding", {})
        lock = data.get("lock", {})
        recall = data.get("recall", {})
        chat = data.get("chat", {})
        try:
            cfg = cls(
                schema_version=version,
                embedding_model=str(embedding.get("model", cls.embedding_model)),
                lock_timeout=float(lock.get("timeout", cls.lock_timeout)),
                recall_k=int(recall.get("k", cls.recall_k)),
                chat_model=str(chat["model"]) if chat.get("model") else None,
                chat_ctx=int(chat["ctx"]) if chat.get("ctx") is not None else None,
                extra={k: v for k, v in data.items() if k not in ("store", "embedding", "lock", "recall", "chat")},
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: bad value ({exc})") from None
        return cfg

    def to_toml(self) -> str:
        import tomli_w

        doc: dict[str, Any] = {
            "store": {"schema_version": self.schema_version},
            "embedding": {"model": self.embedding_model},
            "lock": {"timeout": self.lock_timeout},
            "recall": {"k": self.recall_k},
        }
        chat = {"model": self.chat_model, "ctx": self.chat_ctx}
        if any(v is not None for v in chat.values()):
            doc["chat"] = {k: v for k, v in chat.items() if v is not None}
        doc.update(self.extra)
        header = (
            "# memos store settings. Edit with care: this file is versioned with the memory.\n"
            "# [embedding] model: 'all-MiniLM-L6-v2' (the default) or a path to a GGUF embedding model.\n"
            "# [chat] model: a path to a GGUF chat model (default: Gemma 3 270M); ctx: its context size.\n"
        )
        return header + tomli_w.dumps(doc)
