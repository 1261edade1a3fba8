"""Where the store lives and what its ``memos.toml`` says.

Every setting has a dotted key (``recall.k``, ``consolidate.duplicates.similarity``),
a default and a check. ``StoreConfig.load`` checks every known key; values of the
wrong type or out of range make the store refuse to open with a message that names
the key. Sections memos does not know are kept as they are, and so are unknown keys
in the sections ``[store]``, ``[embedding]``, ``[lock]``, ``[recall]`` and ``[chat]``;
the ``[consolidate.*]`` tables (``policy.ConsolidatePolicy``) are strict: an unknown
key there is an error, since a typo in a policy run from cron must not go unnoticed,
and so is ``[privacy]`` (``privacy.policy.PrivacyPolicy``), where a typo would leave
a kind unguarded.

``StoreConfig.with_value`` and ``without`` return a new, checked config with one
setting changed; ``MemoryStore.set_config`` writes it and commits it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_cli.errors import StoreError, UsageError
from memos_cli.privacy import policy as privacy_policy
from memos_cli.privacy.policy import PrivacyPolicy
from memos_cli.store.policy import (
    SECTION,
    Check,
    ConsolidatePolicy,
    number,
    policy_keys,
    table_keys,
    text,
    unknown_key,
    whole,
)

# Version of the on-disk layout (unit files and config). A store written by
# a newer version is refused rather than misread; an older one is migrated.
# 1: the LanceDB table in git; 2: one JSON file per unit; 3: units may be
# ``pinned`` (a field schema 2 would reject as unknown).
SCHEMA_VERSION = 3
CONFIG_NAME = "memos.toml"
CONSOLIDATE = SECTION  # the [consolidate] tables
PRIVACY = privacy_policy.SECTION  # the [privacy] table
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def resolve_store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--store DIR``, else ``$MEMOS_HOME``, else ``~/.memos``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MEMOS_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".memos"


@dataclass(frozen=True)
class _Spec:
    """A setting of the sections before [consolidate]: where it lives in ``StoreConfig``."""

    key: str
    attr: str
    default: Any
    help: str
    check: Check
    read_only: bool = False


_SPECS = (
    _Spec("store.schema_version", "schema_version", SCHEMA_VERSION,
          "version of the store's layout; memos raises it when it upgrades the store (read-only)", whole(1),
          read_only=True),
    _Spec("embedding.model", "embedding_model", DEFAULT_EMBEDDING_MODEL,
          "the embedding model: all-MiniLM-L6-v2, or a path to a GGUF embedding model", text()),
    _Spec("lock.timeout", "lock_timeout", 10.0,
          "seconds a writer waits for another before it fails ($MEMOS_LOCK_TIMEOUT overrides it)", number(0)),
    _Spec("recall.k", "recall_k", 10, "how many results `memos recall` returns when -k is not given", whole(1, 1000)),
    _Spec("recall.min_relevance", "recall_min_relevance", 0.0,
          "results with a relevance (0 to 1) below this are dropped when --min-relevance is not given",
          number(0, 1)),
    _Spec("chat.model", "chat_model", None,
          "a path to a GGUF chat model (none: Gemma 3 270M from its package); --model overrides it", text()),
    _Spec("chat.ctx", "chat_ctx", None, "the chat's context size in tokens (none: 8192); --ctx overrides it",
          whole(256, 1 << 20)),
    _Spec("chat.k", "chat_k", None, "memories recalled per chat turn at most (none: 8); -k overrides it",
          whole(1, 100)),
    _Spec("chat.budget", "chat_budget", None,
          "tokens of recalled memories per chat turn at most (none: 1024); --budget overrides it", whole(0, 1 << 20)),
    _Spec("chat.min_relevance", "chat_min_relevance", None,
          "memories recalled for a question with a relevance below this are not shown to the model "
          "(none: 0.5)", number(0, 1)),
)
_SECTIONS = tuple(dict.fromkeys(s.key.partition(".")[0] for s in _SPECS))  # store, embedding, lock, recall, chat


@dataclass(frozen=True)
class Setting:
    """One setting as ``memos config`` shows it."""

    key: str  # dotted: section.name, or consolidate.table.name
    value: Any  # None: not set (a setting whose default is decided elsewhere)
    default: Any
    help: str
    read_only: bool = False

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def is_default(self) -> bool:
        return self.value == self.default

    def to_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {"key": self.key, "value": plain(self.value), "default": plain(self.default),
                "is_default": self.is_default, "read_only": self.read_only, "help": self.help}


def all_keys() -> list[str]:
    """Every setting's dotted key, in the order ``memos config`` shows them."""
    return [s.key for s in _SPECS] + policy_keys() + privacy_policy.keys()


@dataclass
class StoreConfig:
    """The settings in ``memos.toml``."""

    schema_version: int = SCHEMA_VERSION
    embedding_model: str = DEFAULT_EMBEDDING_MODEL  # the default, or a path to a GGUF
    lock_timeout: float = 10.0  # seconds a writer waits for another
    recall_k: int = 10  # results of `memos recall` without -k
    recall_min_relevance: float = 0.0  # results below it are dropped (0: none)
    chat_model: str | None = None  # a path to a GGUF chat model; None: Gemma 3 270M from its package
    chat_ctx: int | None = None  # the chat's context size in tokens; None: 8192
    chat_k: int | None = None  # memories recalled per chat turn; None: 8
    chat_budget: int | None = None  # tokens of recalled memories per chat turn; None: 1024
    chat_min_relevance: float | None = None  # memories below it are not put in the prompt; None: 0.5
    consolidate: ConsolidatePolicy = field(default_factory=ConsolidatePolicy)  # the policy of `memos consolidate`
    consolidate_keys: frozenset[str] = frozenset()  # its keys present in memos.toml: written back even at defaults
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)  # what writes do with secrets and personal data
    privacy_keys: frozenset[str] = frozenset()  # its keys present in memos.toml
    extra: dict[str, Any] = field(default_factory=dict)  # sections we do not know, kept as they are
    extra_keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # unknown keys of known sections, kept too

    @classmethod
    def load(cls, path: Path) -> StoreConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{path.parent} is not a memos store (no {CONFIG_NAME})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: not valid TOML ({exc})") from None
        store = data.get("store", {})
        if not isinstance(store, dict):
            raise StoreError(f"{path}: bad [store]: use a table of settings")
        if "schema_version" not in store:
            raise StoreError(f"{path}: [store] schema_version is missing")
        version = store["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise StoreError(f"{path}: bad [store] schema_version {version!r}: use a whole number from 1 "
                             f"(this memos writes {SCHEMA_VERSION})")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"this store was written by a newer memos (schema {version}, this memos reads up to "
                f"{SCHEMA_VERSION}); upgrade memos to use it"
            )
        try:
            return cls.from_doc(data)
        except UsageError as exc:
            raise StoreError(f"{path}: {exc}") from None

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> StoreConfig:
        """The config from a parsed memos.toml; raises ``UsageError`` naming the first bad key."""
        values: dict[str, Any] = {}
        extra_keys: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            table = data.get(section, {})
            if not isinstance(table, dict):
                raise UsageError(f"bad [{section}]: use a table of settings")
            known = {s.key.partition(".")[2]: s for s in _SPECS if s.key.startswith(section + ".")}
            for name, value in table.items():
                spec = known.get(name)
                if spec is None:
                    extra_keys.setdefault(section, {})[name] = value
                elif spec.default is None and value == "":
                    continue  # an empty chat model: the default, as it always was
                else:
                    values[spec.attr] = spec.check(spec.key, value)
        raw = data.get(CONSOLIDATE, {})
        private = data.get(PRIVACY, {})
        return cls(**values, consolidate=ConsolidatePolicy.from_table(raw),
                   consolidate_keys=frozenset(table_keys(raw)),
                   privacy=PrivacyPolicy.from_table(private), privacy_keys=frozenset(privacy_policy.table_keys(private)),
                   extra={k: v for k, v in data.items() if k not in (*_SECTIONS, CONSOLIDATE, PRIVACY)},
                   extra_keys=extra_keys)

    def to_doc(self) -> dict[str, Any]:
        """The memos.toml document: [store], [embedding], [lock] and [recall] always; [chat] and
        [consolidate] only with something set, so the file stays short for who never changes them."""
        doc: dict[str, Any] = {
            "store": {"schema_version": self.schema_version},
            "embedding": {"model": self.embedding_model},
            "lock": {"timeout": self.lock_timeout},
            "recall": {"k": self.recall_k},
        }
        if self.recall_min_relevance:  # written only when set, so older memos read the file as before
            doc["recall"]["min_relevance"] = self.recall_min_relevance
        chat = {"model": self.chat_model, "ctx": self.chat_ctx, "k": self.chat_k, "budget": self.chat_budget,
                "min_relevance": self.chat_min_relevance}
        if any(v is not None for v in chat.values()):
            doc["chat"] = {k: v for k, v in chat.items() if v is not None}
        for section, table in self.extra_keys.items():
            doc.setdefault(section, {}).update(table)
        policy = self.consolidate.to_table(self.consolidate_keys)
        if policy:
            doc[CONSOLIDATE] = policy
        private = self.privacy.to_table(self.privacy_keys)
        if private:
            doc[PRIVACY] = private
        doc.update(self.extra)
        return doc

    def to_toml(self) -> str:
        import tomli_w

        header = (
            "# memos store settings. Edit with care: this file is versioned with the memory.\n"
            "# `memos config` lists every setting with its default; `memos config set KEY VALUE` changes one.\n"
            "# [embedding] model: 'all-MiniLM-L6-v2' (the default) or a path to a GGUF embedding model.\n"
            "# [chat] model: a path to a GGUF chat model (default: Gemma 3 270M); ctx: its context size;\n"
            "# k, budget: memories recalled per turn, and their tokens (fewer: a sooner first token).\n"
            "# [consolidate.*]: the policy of `memos consolidate` (duplicates, superseded, expiry, heat,\n"
            "# episodes, compaction); only the settings changed from their defaults need be here.\n"
            "# [privacy]: what writes do with secrets and personal data (refuse, redact, allow).\n"
        )
        return header + tomli_w.dumps(self.to_doc())

    # ---- one setting at a time (``memos config``) -----------------------------------

    def settings(self) -> list[Setting]:
        """Every setting with its value and default, in order."""
        out = [Setting(s.key, getattr(self, s.attr), s.default, s.help, s.read_only) for s in _SPECS]
        out += [Setting(p.key, p.value, p.default, p.help) for p in self.consolidate.settings()]
        out += [Setting(p.key, p.value, p.default, p.help) for p in self.privacy.settings()]
        return out

    def get(self, key: str) -> Setting:
        """One setting by its dotted key; ``UsageError`` for an unknown one."""
        for s in self.settings():
            if s.key == key:
                return s
        raise _unknown(key)

    def with_value(self, key: str, value: Any) -> StoreConfig:
        """A new config with ``key`` set to ``value``, every setting checked; raises ``UsageError``."""
        self._writable(key)
        doc = self.to_doc()
        *path, name = key.split(".")
        table = doc
        for part in path:
            table = table.setdefault(part, {})
        table[name] = list(value) if isinstance(value, tuple) else value
        return StoreConfig.from_doc(doc)

    def without(self, key: str) -> StoreConfig:
        """A new config with ``key`` back to its default (removed from memos.toml)."""
        self._writable(key)
        doc = self.to_doc()
        *path, name = key.split(".")
        tables = [doc]
        for part in path:
            nxt = tables[-1].get(part)
            if not isinstance(nxt, dict):
                return StoreConfig.from_doc(doc)
            tables.append(nxt)
        tables[-1].pop(name, None)
        for parent, part in zip(reversed(tables[:-1]), reversed(path), strict=True):  # drop emptied tables
            if not parent[part]:
                del parent[part]
        return StoreConfig.from_doc(doc)

    def _writable(self, key: str) -> None:
        setting = self.get(key)
        if setting.read_only:
            raise UsageError(f"{key} is read-only: memos sets it when it upgrades the store")


def _unknown(key: str) -> UsageError:
    keys = all_keys()
    if not isinstance(key, str) or not key:
        return UsageError("give a setting's key, such as recall.k")
    prefix = key + "."
    inside = [k for k in keys if k.startswith(prefix)]
    if inside:
        below = dict.fromkeys(k.removeprefix(prefix).partition(".")[0] for k in inside)
        return UsageError(f"{key} is a section, not a setting; it has: {', '.join(below)}")
    section = key.rpartition(".")[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == section]
    if siblings:
        return unknown_key(key, siblings, f"[{section}]")
    import difflib

    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UsageError(f"unknown setting {key}{hint}; `memos config show` lists them all")
