"""What a run decides and does: actions, the report, and the scopes of its plans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError
from memos_cli.plaintext.units import iso, utcnow

if TYPE_CHECKING:
    pass

ACTIONS = ("expire", "merge", "supersede", "summarise", "promote", "demote", "refresh")
HEAT_ACTIONS = ("promote", "demote", "refresh")  # activation memory: derived data, no commit


@dataclass
class Action:
    """One thing the run does (or, with --dry-run, would do)."""

    action: str  # one of ACTIONS
    cube: str
    units: list[str]  # the target first: the survivor, the newer fact, the summary's turns...
    reason: str
    status: str = "planned"  # planned, done, skipped
    note: str = ""  # why it was skipped
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # what applying needs

    def to_json(self) -> dict[str, Any]:
        out = {"action": self.action, "cube": self.cube, "units": self.units, "reason": self.reason,
               "status": self.status}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Report:
    """What a run did: its actions, its commit, the steps it skipped and why."""

    cubes: list[str]
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps that could not run, with why
    maintenance: list[str] = field(default_factory=list)  # compaction, cache files removed
    started: datetime = field(default_factory=utcnow)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, over all cubes
    commits: list[str] = field(default_factory=list)  # one per slice of the changes
    judged: int = 0  # pairs the LLM judge of superseded facts asked the chat model about
    remembered: int = 0  # pairs it did not ask again: their verdict was kept from an earlier run
    scopes: dict[str, Scope] = field(default_factory=dict)  # what the plan of each cube read
    parametric: list[dict[str, Any]] = field(default_factory=list)  # stale parametric memories, and what was done

    @property
    def commit(self) -> str | None:
        """The run's last commit (None: it made none)."""
        return self.commits[-1] if self.commits else None

    def timed(self, phase: str, since: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - since

    @property
    def changed(self) -> bool:
        """Whether the run changed the memory or its activation caches."""
        return any(a.status == "done" for a in self.actions)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:  # merges, supersessions... count as one each; promotions count their units
            if a.status == ("planned" if self.dry_run else "done"):
                out[a.action] = out.get(a.action, 0) + (len(a.units) if a.action in ("promote", "demote") else 1)
        return out

    def summary(self) -> str:
        """One line: what was done (or would be), or that nothing was."""
        counts = self.counts()
        verbs = {"expire": "expired", "merge": "merged", "supersede": "superseded", "summarise": "summarised",
                 "promote": "promoted", "demote": "demoted", "refresh": "refreshed"}
        parts = [f"{verbs[a]} {counts[a]}" for a in ACTIONS if counts.get(a)]
        text = ", ".join(parts) if parts else "nothing to do"
        if self.dry_run and parts:
            text = "would have " + text
        skipped = sum(1 for a in self.actions if a.status == "skipped")
        if skipped:
            text += f"; {skipped} skipped"
        if self.skipped:
            text += f"; {len(self.skipped)} step{'s' if len(self.skipped) != 1 else ''} not run"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cubes": self.cubes,
            "summary": self.summary(),
            "counts": self.counts(),
            "commit": self.commit,
            "commits": self.commits,
            "actions": [a.to_json() for a in self.actions],
            "skipped": self.skipped,
            "maintenance": self.maintenance,
            "started": iso(self.started),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "mode": self.mode,
            "scope": {cube: scope.to_json() for cube, scope in self.scopes.items()},
            "judge": {"asked": self.judged, "remembered": self.remembered},
            "parametric": self.parametric,
        }

    @property
    def mode(self) -> str:
        """"incremental" when every cube's plan read only what changed since the last run, "full" when
        every one read the whole cube, "mixed" otherwise."""
        modes = {s.mode for s in self.scopes.values()}
        return modes.pop() if len(modes) == 1 else "mixed" if modes else "full"


class StepSkipped(MemosError):
    """A step that cannot run this time (its model is missing); the others go on."""


@dataclass
class Scope:
    """How much of a cube one run's plan reads, and why."""

    mode: str  # "full" or "incremental"
    reason: str = ""  # full: why
    since: str | None = None  # incremental: the commit the last run saw
    changed: list[str] = field(default_factory=list)  # incremental: the cube's active units changed since
    compared: int = 0  # units the duplicates and superseded steps compared

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "full":
            out["reason"] = self.reason
        else:
            out["since"] = self.since
            out["changed"] = len(self.changed)
        out["compared"] = self.compared
        return out


def archived(action: Action) -> list[str]:
    """The units an action archives (or forgets): they take no part in later steps."""
    if action.action in ("expire", "summarise"):
        return action.units
    if action.action == "merge":  # the duplicates
        return action.units[1:]
    return []


def leaving(action: Action) -> list[str]:
    """The units an action archives or closes (the older fact): they leave activation memory."""
    return action.units[1:] if action.action == "supersede" else archived(action)
