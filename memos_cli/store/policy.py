"""The policy of ``memos consolidate``: the ``[consolidate.*]`` tables of ``memos.toml``.

``memos consolidate`` is meant to run unattended (from cron), so its policy
is strict: every key is checked when ``memos.toml`` is read, and an unknown
key (a typo) or a bad value is an error naming the key and what is allowed,
never silently ignored. Every key is optional; a missing one has its default::

    [consolidate.duplicates]      # merge near-duplicate memories
    enabled = true
    similarity = 0.92             # cosine similarity of their embeddings, at least
    text_similarity = 0.6         # and a text check they must pass too

    [consolidate.superseded]      # close facts that a newer one replaces
    enabled = true
    similarity = 0.68
    kinds = ["fact", "preference"]
    judge = "rules"               # or "llm": the chat model decides

    [consolidate.expiry]          # units past their ttl
    enabled = true
    action = "archive"            # or "delete" (forget)

    [consolidate.heat]            # promote the hottest units into activation memory
    access = 0.4                  # the weights and scales of plaintext.heat.HeatWeights
    recency = 0.4
    importance = 0.2
    half_life_days = 7.0
    access_half = 5.0
    activation_top = 20           # units per cube in activation memory; 0: none
    cold_after_days = 90          # unused this long: demoted; 0: never

    [consolidate.episodes]        # summarise old conversation episodes
    summarise = false
    older_than_days = 30
    min_episodes = 5

    [consolidate.compaction]      # merge table fragments, repack git
    enabled = true

Pure (no I/O): ``config.StoreConfig`` reads and writes the tables.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from memos_cli.errors import UsageError
from memos_cli.plaintext.heat import HeatWeights
from memos_cli.plaintext.units import check_name

SECTION = "consolidate"

# A check takes a setting's dotted key and a value, and returns the value to keep
# (ints become floats where a float is meant), or raises ``UsageError`` naming the key.
Check = Callable[[str, Any], Any]


def toml_literal(value: Any) -> str:
    """A value as it is written in TOML, on one line (for messages and ``memos config get``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "(none)"
    return str(value)  # a TOML date or time


def bad_value(key: str, value: Any, allowed: str) -> UsageError:
    return UsageError(f"bad {key} {toml_literal(value)}: {allowed}")


def unknown_key(key: str, known: Iterable[str], where: str) -> UsageError:
    """An unknown setting, with the closest known one if it looks like a typo."""
    known = list(known)
    short = [k.rpartition(".")[2] for k in known]  # compared alone: the shared prefix would make all look close
    close = difflib.get_close_matches(key.rpartition(".")[2], short, n=1, cutoff=0.6)
    hint = f" (did you mean {known[short.index(close[0])]}?)" if close else ""
    return UsageError(f"unknown setting {key}{hint}; {where} has: {', '.join(short)}")


# ---- checks -------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def boolean() -> Check:
    def check(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise bad_value(key, value, "use true or false")
        return value

    return check


def number(low: float, high: float | None = None, *, above: bool = False) -> Check:
    """A finite number from ``low`` (or above it, with ``above``) up to ``high``, as a float."""
    if high is None:
        allowed = f"use a number {'above' if above else 'from'} {low:g}"
    else:
        allowed = f"use a number above {low:g} and at most {high:g}" if above else f"use a number from {low:g} to {high:g}"

    def check(key: str, value: Any) -> float:
        if not _is_number(value) or value < low or (above and value == low) or (high is not None and value > high):
            raise bad_value(key, value, allowed)
        return float(value)

    return check


def whole(low: int, high: int | None = None) -> Check:
    """A whole number from ``low`` up to ``high``."""
    allowed = f"use a whole number from {low}" + (f" to {high}" if high is not None else "")

    def check(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            raise bad_value(key, value, allowed)
        return value

    return check


def choice(*options: str) -> Check:
    allowed = "use " + " or ".join(json.dumps(o) for o in options)

    def check(key: str, value: Any) -> str:
        if value not in options or not isinstance(value, str):
            raise bad_value(key, value, allowed)
        return value

    return check


def text() -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise bad_value(key, value, "use a non-empty string")
        return value

    return check


def kinds() -> Check:
    """A non-empty list of unit kinds, kept as a tuple (the policy is frozen)."""
    allowed = 'use a non-empty list of kinds such as ["fact", "preference"]'

    def check(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise bad_value(key, value, allowed)
        try:
            return tuple(dict.fromkeys(check_name(v, "kind") for v in value))
        except UsageError as exc:
            raise UsageError(f"bad {key} {toml_literal(value)}: {exc}") from None

    return check


def setting(default: Any, help: str, check: Check) -> Any:
    """A field of a policy table: its default, what it means, how it is checked."""
    return field(default=default, metadata={"help": help, "check": check})


# ---- the tables -----------------------------------------------------------------


class _Table:
    """A ``[consolidate.NAME]`` table: each field is a setting, checked on creation."""

    NAME: ClassVar[str]

    @classmethod
    def key(cls, name: str) -> str:
        return f"{SECTION}.{cls.NAME}.{name}"

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, f.metadata["check"](self.key(f.name), getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Checks across fields."""

    @classmethod
    def from_table(cls, table: Any) -> Any:
        if not isinstance(table, dict):
            raise bad_value(f"{SECTION}.{cls.NAME}", table, f"use a table, [{SECTION}.{cls.NAME}]")
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for name in table:
            if name not in names:
                raise unknown_key(cls.key(name), [cls.key(n) for n in names], f"[{SECTION}.{cls.NAME}]")
        return cls(**table)


@dataclass(frozen=True)
class DuplicatesPolicy(_Table):
    """Near-duplicate memories are merged into one."""

    NAME: ClassVar[str] = "duplicates"
    enabled: bool = setting(True, "merge near-duplicate memories", boolean())
    similarity: float = setting(0.92, "cosine similarity of two units' embeddings at which they may be duplicates",
                                number(0, 1, above=True))
    text_similarity: float = setting(0.6, "how alike their texts must also be (0 to 1; 0: no text check)", number(0, 1))


@dataclass(frozen=True)
class SupersededPolicy(_Table):
    """A newer fact that replaces an older one closes it (``valid_to``, ``supersedes``)."""

    NAME: ClassVar[str] = "superseded"
    enabled: bool = setting(True, "close facts that a newer one replaces", boolean())
    similarity: float = setting(0.68, "cosine similarity at which a newer unit may replace an older one",
                                number(0, 1, above=True))
    kinds: tuple[str, ...] = setting(("fact", "preference"), "the kinds of units that can be superseded", kinds())
    judge: str = setting("rules", 'who decides: "rules" (same subject, newer time) or "llm" (the chat model)',
                         choice("rules", "llm"))


@dataclass(frozen=True)
class ExpiryPolicy(_Table):
    """Units past their ``expires_at`` (``--ttl``)."""

    NAME: ClassVar[str] = "expiry"
    enabled: bool = setting(True, "act on units past their ttl", boolean())
    action: str = setting("archive", 'what happens to them: "archive" (status archived) or "delete" (forgotten)',
                          choice("archive", "delete"))


@dataclass(frozen=True)
class HeatPolicy(_Table):
    """How hot a unit is (``plaintext.heat``), and what that means for activation memory."""

    NAME: ClassVar[str] = "heat"
    access: float = setting(0.4, "weight of the access count in heat", number(0))
    recency: float = setting(0.4, "weight of the recency of use in heat", number(0))
    importance: float = setting(0.2, "weight of the declared importance in heat", number(0))
    half_life_days: float = setting(7.0, "days in which the recency signal halves", number(0, above=True))
    access_half: float = setting(5.0, "accesses at which the access signal is 1/2", number(0, above=True))
    activation_top: int = setting(20, "the hottest units of each cube promoted into activation memory (0: none)",
                                  whole(0, 10_000))
    cold_after_days: float = setting(90.0, "days unused after which a unit is demoted from activation memory (0: never)",
                                     number(0))

    def _check(self) -> None:
        try:
            self.weights  # noqa: B018 - HeatWeights checks the weights together
        except UsageError as exc:
            reason = str(exc).partition(": ")[2] or str(exc)
            raise UsageError(f"bad {SECTION}.{self.NAME} weights: {reason}") from None

    @property
    def weights(self) -> HeatWeights:
        return HeatWeights(access=self.access, recency=self.recency, importance=self.importance,
                           half_life_days=self.half_life_days, access_half=self.access_half)


@dataclass(frozen=True)
class EpisodesPolicy(_Table):
    """Old conversation turns (``episode`` units) summarised into one note per session."""

    NAME: ClassVar[str] = "episodes"
    summarise: bool = setting(False, "summarise old episodes with the chat model (off by default)", boolean())
    older_than_days: float = setting(30.0, "only episodes older than this many days", number(0))
    min_episodes: int = setting(5, "only sessions with at least this many such episodes", whole(1))


@dataclass(frozen=True)
class CompactionPolicy(_Table):
    """``memos compact`` at the end of a run."""

    NAME: ClassVar[str] = "compaction"
    enabled: bool = setting(True, "merge table fragments and repack git after the other steps", boolean())


@dataclass(frozen=True)
class ParametricPolicy(_Table):
    """Parametric memory (LoRA adapters) whose source units changed since they were learned."""

    NAME: ClassVar[str] = "parametric"
    relearn: bool = setting(False, "learn stale adapters again from their source units as they are now "
                                   "(minutes each; off by default: they are reported)", boolean())


_TABLES: dict[str, type[_Table]] = {t.NAME: t for t in (DuplicatesPolicy, SupersededPolicy, ExpiryPolicy, HeatPolicy,
                                                        EpisodesPolicy, ParametricPolicy, CompactionPolicy)}


@dataclass(frozen=True)
class PolicySetting:
    key: str  # dotted, from the top of memos.toml: consolidate.duplicates.similarity
    value: Any
    default: Any
    help: str


@dataclass(frozen=True)
class ConsolidatePolicy:
    """What ``memos consolidate`` does: one table per step (see the module's docstring)."""

    duplicates: DuplicatesPolicy = field(default_factory=DuplicatesPolicy)
    superseded: SupersededPolicy = field(default_factory=SupersededPolicy)
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    heat: HeatPolicy = field(default_factory=HeatPolicy)
    episodes: EpisodesPolicy = field(default_factory=EpisodesPolicy)
    parametric: ParametricPolicy = field(default_factory=ParametricPolicy)
    compaction: CompactionPolicy = field(default_factory=CompactionPolicy)

    @classmethod
    def from_table(cls, table: Any) -> ConsolidatePolicy:
        """The policy from the ``[consolidate]`` table of memos.toml (its sub-tables); raises ``UsageError``."""
        if not isinstance(table, dict):
            raise bad_value(SECTION, table, f"use tables such as [{SECTION}.duplicates]")
        for name in table:
            if name not in _TABLES:
                raise unknown_key(f"{SECTION}.{name}", [f"{SECTION}.{n}" for n in _TABLES], f"[{SECTION}]")
        return cls(**{name: kind.from_table(table[name]) for name, kind in _TABLES.items() if name in table})

    def settings(self) -> Iterator[PolicySetting]:
        """Every setting of the policy, table by table."""
        for name, kind in _TABLES.items():
            current = getattr(self, name)
            for f in fields(kind):  # type: ignore[arg-type]
                yield PolicySetting(kind.key(f.name), getattr(current, f.name), f.default, f.metadata["help"])

    def to_table(self, keep: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """The ``[consolidate]`` table to write: the settings that differ from their defaults, and those
        in ``keep`` (dotted keys, as read from the file), so a file that never set any stays short."""
        keep = set(keep)
        out: dict[str, dict[str, Any]] = {}
        for s in self.settings():
            if s.value != s.default or s.key in keep:
                _, table, name = s.key.split(".")
                out.setdefault(table, {})[name] = list(s.value) if isinstance(s.value, tuple) else s.value
        return out


def table_keys(table: Any) -> set[str]:
    """The dotted keys of the settings present in a ``[consolidate]`` table."""
    if not isinstance(table, dict):
        return set()
    return {f"{SECTION}.{name}.{key}" for name, sub in table.items() if isinstance(sub, dict) for key in sub}


def policy_keys() -> list[str]:
    """Every key of the policy, in order."""
    return [s.key for s in ConsolidatePolicy().settings()]
