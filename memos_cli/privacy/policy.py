"""The privacy policy: the ``[privacy]`` table of ``memos.toml``, and per-command overrides.

Every key is optional and checked when ``memos.toml`` is read; an unknown key
(a typo, a kind that does not exist) is an error, never ignored::

    [privacy]
    secrets = "refuse"        # what a write does with credentials: refuse, redact or allow
    personal = "allow"        # ... with personal data (e-mail, phone, card, iban)
    email = "redact"          # one kind's own action, over its group's
    mask = ["secrets", "personal"]   # what `memos recall --mask` hides: kinds or groups
    phone_region = "GB"       # also find national phone numbers of this region

``refuse``: the write fails with one line naming the kind and where, and
nothing is written; ``redact``: the match is stored as ``[redacted:KIND]``
and the original is written nowhere; ``allow``: stored as given (and not
looked for).

Pure (no detector imported): ``config.StoreConfig`` reads and writes the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.privacy.kinds import BY_NAME, GROUPS, NAMES, PERSONAL, SECRETS, in_group
from memos_cli.store.policy import PolicySetting, bad_value, unknown_key

SECTION = "privacy"
ACTIONS = ("refuse", "redact", "allow")
_ALLOWED_ACTION = 'use "refuse", "redact" or "allow"'
_DEFAULTS = {SECRETS: "refuse", PERSONAL: "allow"}
_DEFAULT_MASK = (SECRETS, PERSONAL)
_HELP = {
    SECRETS: "what a write does with credentials (keys, tokens, passwords): refuse, redact or allow",
    PERSONAL: "what a write does with personal data (e-mail, phone, card, iban): refuse, redact or allow",
    "mask": "the kinds, or groups (secrets, personal), that `memos recall --mask` hides",
    "phone_region": 'a region such as "GB" or "US": national phone numbers of it are personal data too '
                    '("": only international ones, +44 ...)',
}


def _action(key: str, value: Any) -> str:
    if value not in ACTIONS or not isinstance(value, str):
        raise bad_value(key, value, _ALLOWED_ACTION)
    return value


def _kinds(key: str, value: Any) -> tuple[str, ...]:
    """A list of kinds and groups, kept as given (groups are expanded by ``masked``)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise bad_value(key, value, 'use a list of kinds or groups, such as ["secrets", "email"]')
    expand(value, key)  # every name known
    return tuple(dict.fromkeys(value))


def _region(key: str, value: Any) -> str:
    if not isinstance(value, str) or not (value == "" or (len(value) == 2 and value.isalpha())):
        raise bad_value(key, value, 'use a two-letter region such as "GB", or "" for international numbers only')
    return value.upper()


def expand(names: Iterable[str], where: str = "") -> tuple[str, ...]:
    """Kinds and groups as the kinds they name, in ``NAMES`` order; an unknown one is a
    ``UsageError`` (``where``: the setting or flag that gave it)."""
    chosen: set[str] = set()
    for name in names:
        if name in GROUPS:
            chosen.update(in_group(name))
        elif name in BY_NAME:
            chosen.add(name)
        else:
            raise unknown_kind(name, where)
    return tuple(k for k in NAMES if k in chosen)


def unknown_kind(name: str, where: str = "") -> UsageError:
    import difflib

    close = difflib.get_close_matches(name, [*NAMES, *GROUPS], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    prefix = f"bad {where}: " if where else ""
    return UsageError(f"{prefix}unknown kind {name!r}{hint}; the kinds are {', '.join(NAMES)} "
                      f"(groups: {', '.join(GROUPS)})")


@dataclass(frozen=True)
class PrivacyPolicy:
    """What writes do with each kind of sensitive text, and what ``--mask`` hides."""

    secrets: str = _DEFAULTS[SECRETS]
    personal: str = _DEFAULTS[PERSONAL]
    kinds: dict[str, str] = field(default_factory=dict)  # a kind's own action, over its group's
    mask: tuple[str, ...] = _DEFAULT_MASK
    phone_region: str = ""

    @classmethod
    def from_table(cls, table: Any) -> PrivacyPolicy:
        """The policy from the ``[privacy]`` table; raises ``UsageError`` naming the first bad key."""
        if not isinstance(table, dict):
            raise bad_value(SECTION, table, "use a table, [privacy]")
        values: dict[str, Any] = {}
        kinds: dict[str, str] = {}
        for name, value in table.items():
            key = f"{SECTION}.{name}"
            if name in GROUPS:
                values[name] = _action(key, value)
            elif name == "mask":
                values["mask"] = _kinds(key, value)
            elif name == "phone_region":
                values["phone_region"] = _region(key, value)
            elif name in BY_NAME:
                kinds[name] = _action(key, value)
            else:
                raise unknown_key(key, keys(), f"[{SECTION}] (its kinds: {', '.join(NAMES)})")
        return cls(**values, kinds=kinds)

    def action(self, kind: str) -> str:
        return self.kinds.get(kind) or getattr(self, BY_NAME[kind].group)

    def actions(self, override: dict[str, str] | None = None) -> dict[str, str]:
        """Every kind's action for one command: the policy's, under a command's ``override``
        (``{"*": action}`` for every kind, or by kind)."""
        override = override or {}
        return {k: override.get(k) or override.get("*") or self.action(k) for k in NAMES}

    def guarded(self) -> tuple[str, ...]:
        """The kinds a write looks for under the policy alone: those it does not allow."""
        return tuple(k for k in NAMES if self.action(k) != "allow")

    def masked(self) -> tuple[str, ...]:
        """The kinds ``--mask`` hides, groups expanded."""
        return expand(self.mask)

    def settings(self) -> Iterator[PolicySetting]:
        yield PolicySetting(f"{SECTION}.secrets", self.secrets, _DEFAULTS[SECRETS], _HELP[SECRETS])
        yield PolicySetting(f"{SECTION}.personal", self.personal, _DEFAULTS[PERSONAL], _HELP[PERSONAL])
        for kind in NAMES:
            info = BY_NAME[kind]
            yield PolicySetting(f"{SECTION}.{kind}", self.kinds.get(kind), None,
                                f"{info.help}: refuse, redact or allow (none: as {info.group})")
        yield PolicySetting(f"{SECTION}.mask", self.mask, _DEFAULT_MASK, _HELP["mask"])
        yield PolicySetting(f"{SECTION}.phone_region", self.phone_region, "", _HELP["phone_region"])

    def to_table(self, keep: Iterable[str] = ()) -> dict[str, Any]:
        """The ``[privacy]`` table to write: settings that differ from their defaults, and those in ``keep``."""
        keep = set(keep)
        out: dict[str, Any] = {}
        for s in self.settings():
            if s.value is not None and (s.value != s.default or s.key in keep):
                out[s.key.partition(".")[2]] = list(s.value) if isinstance(s.value, tuple) else s.value
        return out


def keys() -> list[str]:
    return [s.key for s in PrivacyPolicy().settings()]


def table_keys(table: Any) -> set[str]:
    return {f"{SECTION}.{name}" for name in table} if isinstance(table, dict) else set()


def parse_override(values: Iterable[str] | None) -> dict[str, str]:
    """``--privacy`` values: ``ACTION`` (every kind) or ``KIND=ACTION`` / ``GROUP=ACTION``, repeatable."""
    out: dict[str, str] = {}
    for raw in values or ():
        name, sep, action = raw.partition("=")
        if not sep:
            name, action = "*", raw
        name, action = name.strip(), action.strip()
        if action not in ACTIONS:
            raise UsageError(f"bad --privacy {raw!r}: {_ALLOWED_ACTION}, alone or as KIND=ACTION")
        if name == "*":
            out["*"] = action
        else:
            out.update(dict.fromkeys(expand([name], f"--privacy {raw!r}"), action))
    return out


def override_text(override: dict[str, str]) -> str:
    """How an override is written in a commit's trailer: ``allow``, ``email=redact aws-key=allow``."""
    parts = [override["*"]] if "*" in override else []
    parts += [f"{k}={v}" for k, v in override.items() if k != "*"]
    return " ".join(parts)
