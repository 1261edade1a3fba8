"""The guard on every write: text and meta are screened before anything is written anywhere.

A ``Guard`` applies one command's actions (the ``[privacy]`` policy, under the
command's ``--privacy`` override) to what it is about to write: a kind to
``refuse`` raises ``PrivacyError`` naming the kind and where (never the text),
so the write stops before it embeds, locks or writes; a kind to ``redact`` is
replaced by ``[redacted:KIND]``; what an override lets through is counted.
``Screening`` is what the commit records: counts by kind, never values.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from memos_cli.errors import UsageError
from memos_cli.privacy.detect import Detector, Finding
from memos_cli.privacy.policy import PrivacyPolicy, override_text

if TYPE_CHECKING:
    from memos_cli.plaintext.units import MemoryUnit
    from memos_cli.store.commit import Transaction


class PrivacyError(UsageError):
    """A write refused by the privacy policy; nothing was written. ``finding`` says what and where,
    ``hint`` how to store it anyway; a caller that is not a plain write (a chat turn) words the rest."""

    def __init__(self, finding: str, kind: str) -> None:
        self.finding, self.kind = finding, kind
        self.hint = f"Store it as {marker(kind)} with --privacy redact, or as given with --privacy {kind}=allow"
        super().__init__(f"{finding}; nothing was written. {self.hint}")


def marker(kind: str) -> str:
    return f"[redacted:{kind}]"


@lru_cache(maxsize=8)
def detector(kinds: tuple[str, ...], phone_region: str = "") -> Detector:
    """One detector per set of kinds in a process (a chat saves many turns)."""
    return Detector(kinds, phone_region=phone_region)


def redact(text: str, findings: list[Finding], kinds: set[str] | None = None) -> str:
    """``text`` with each finding (of ``kinds``, or all) replaced by its marker."""
    out, at = [], 0
    for f in findings:
        if kinds is None or f.kind in kinds:
            out += [text[at:f.start], marker(f.kind)]
            at = f.end
    return "".join(out) + text[at:]


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeio" else "a"  # "a url-password"


@dataclass
class Screening:
    """What the guard did in one write: counts by kind, and the override that was in force."""

    redacted: Counter[str] = field(default_factory=Counter)
    allowed: Counter[str] = field(default_factory=Counter)  # found, stored as given because of the override
    override: dict[str, str] = field(default_factory=dict)

    def record(self, txn: Transaction) -> None:
        """Into the commit: a trailer for the override and for redactions, a line for each."""
        if self.override:
            txn.trailers["Memos-Privacy-Override"] = override_text(self.override)
            txn.details.append(f"privacy: --privacy {override_text(self.override)}")
        if self.redacted:
            txn.trailers["Memos-Privacy-Redacted"] = _counts(self.redacted)
            txn.details.append(f"privacy: redacted {_counts(self.redacted)}")
        if self.allowed:
            txn.details.append(f"privacy: stored as given by the override: {_counts(self.allowed)}")

    def notice(self) -> str | None:
        """What the user hears on stderr, or None."""
        if not self.redacted:
            return None
        return f"redacted {_counts(self.redacted)} before writing (privacy)"


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


class Guard:
    """One command's privacy actions; screens texts and meta before they are written."""

    def __init__(self, policy: PrivacyPolicy, override: dict[str, str] | None = None) -> None:
        self.override = dict(override or {})
        self.actions = policy.actions(self.override)
        # Looked for: what this command refuses or redacts, and what only the override lets
        # through (so the commit can say it was there).
        guarded = policy.guarded()
        wanted = tuple(k for k, a in self.actions.items() if a != "allow" or k in guarded)
        self.detector = detector(wanted, policy.phone_region) if wanted else None
        self.screening = Screening(override=self.override)

    def text(self, text: str, where: str = "the text") -> str:
        """``text`` as it may be written; raises ``PrivacyError`` for a kind to refuse."""
        if self.detector is None or not text:
            return text
        findings = self.detector.find(text)
        if not findings:
            return text
        for f in findings:
            if self.actions[f.kind] == "refuse":
                line_start = text.rfind("\n", 0, f.start) + 1
                at = f"line {text.count(chr(10), 0, f.start) + 1}, " if "\n" in text else ""
                first, last = f.start - line_start + 1, f.end - line_start
                raise PrivacyError(f"{where} holds {_article(f.kind)} {f.kind} ({at}characters {first}-{last})", f.kind)
        doomed = {f.kind for f in findings if self.actions[f.kind] == "redact"}
        for f in findings:
            (self.screening.redacted if f.kind in doomed else self.screening.allowed)[f.kind] += 1
        return redact(text, findings, doomed) if doomed else text

    def value(self, value: Any, where: str) -> Any:
        """A JSON value (meta) screened string by string, keys included."""
        if isinstance(value, str):
            return self.text(value, where)
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key = self.text(k, f"a key of {where}")  # screened first: only a screened key is ever named
                out[key] = self.value(v, f"{where}[{json.dumps(key[:40])}]")
            return out
        return value

    def unit(self, unit: MemoryUnit, where: str = "") -> None:
        """Screen a new unit's text and meta in place."""
        prefix = f"{where}: " if where else ""
        unit.text = self.text(unit.text, f"{prefix}the text")
        if unit.meta:
            unit.meta = self.value(unit.meta, f"{prefix}meta")


def masker(policy: PrivacyPolicy) -> Callable[[MemoryUnit], MemoryUnit]:
    """For ``--mask``: a function that returns a copy of a unit with the kinds the policy's ``mask``
    names replaced by their markers in its text and meta (the memory itself is not changed)."""
    import dataclasses

    found = detector(policy.masked(), policy.phone_region).find

    def hide(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, found(value))
        if isinstance(value, list):
            return [hide(v) for v in value]
        if isinstance(value, dict):
            return {hide(k): hide(v) for k, v in value.items()}
        return value

    def mask(unit: MemoryUnit) -> MemoryUnit:
        return dataclasses.replace(unit, text=hide(unit.text), meta=hide(unit.meta))

    return mask
