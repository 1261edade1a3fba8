"""Planning: the actions for one cube from its snapshot (no writes), and the heat step's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.errors import MemosError
from memos_cli.plaintext.units import MemoryUnit
from memos_cli.scheduler.model import ModelSlot, Verdicts, complete
from memos_cli.scheduler.report import Action, Report, StepSkipped, archived
from memos_cli.scheduler.scope import (
    Snapshot,
)

if TYPE_CHECKING:
    from memos_cli.store.policy import ConsolidatePolicy
    from memos_cli.store.store import MemoryStore

DEDUPE_PASSES = 5  # at most, above dedupe.EXACT_MAX units (see Planner.duplicates)
JUDGE_PAIRS = 200  # candidate pairs the LLM judge is asked about per cube and run
SUMMARY_TOKENS = 160
SUMMARY_PROMPT_ROOM = 256  # tokens of the context kept free for the summary


# ---- planning -----------------------------------------------------------------------


class Planner:
    """Works out the actions for one cube from its snapshot (no writes)."""

    def __init__(self, store: MemoryStore, policy: ConsolidatePolicy, models: ModelSlot, report: Report,
                 now: datetime) -> None:
        self.store, self.policy, self.models, self.report, self.now = store, policy, models, report, now
        self.incomplete: set[str] = set()  # cubes where a step could not run: the next run goes over them again
        self.unsettled: set[str] = set()  # cubes whose duplicate passes still found some at the last pass

    def plan(self, snap: Snapshot) -> list[Action]:
        used: set[str] = set()  # units archived by an earlier step take no part in later ones
        actions: list[Action] = []
        steps: list[tuple[str, Callable[[Snapshot, set[str]], list[Action]]]] = [
            ("expiry", self.expiry), ("duplicates", self.duplicates), ("superseded", self.superseded),
            ("episodes", self.episodes),
        ]
        for name, step in steps:
            since = time.perf_counter()
            try:
                found = step(snap, used)
            except StepSkipped as exc:
                self.report.skipped.append(f"{name} in cube {snap.cube}: {exc}")
                self.incomplete.add(snap.cube)
                continue
            finally:
                self.report.timed(name, since)
            actions += found
            for a in found:
                used.update(archived(a))
        return actions

    def expiry(self, snap: Snapshot, used: set[str]) -> list[Action]:
        policy = self.policy.expiry
        if not policy.enabled:
            return []
        verb = "archived" if policy.action == "archive" else "forgotten"
        return [Action("expire", snap.cube, [u.id], f"expired at {u.expires_at:%Y-%m-%d %H:%M:%S}Z; {verb}",
                       extra={"to": "archived" if policy.action == "archive" else "deleted"})
                for u in snap.units if u.expires_at is not None and u.expires_at <= self.now]

    def duplicates(self, snap: Snapshot, used: set[str]) -> list[Action]:
        from memos_cli.scheduler.dedupe import EXACT_MAX, find_duplicates

        policy = self.policy.duplicates
        if not policy.enabled:
            return []
        # Above EXACT_MAX units the search is approximate (LSH), and which pairs it finds depends on
        # the units it is given: a pass without the duplicates of the last can find a few more. Passes
        # go on until one finds nothing, so the next run (the same units) finds nothing either.
        merged: dict[str, dict[str, str]] = {}  # survivor -> {duplicate: reason}
        gone = set(used)
        for _ in range(DEDUPE_PASSES):
            units, vectors = snap.rows(lambda u: u.id not in gone and snap.compares(u.id))
            groups = find_duplicates([u.id for u in units], [u.text for u in units], vectors,
                                     similarity=policy.similarity, text_similarity=policy.text_similarity)
            for g in groups:
                self.absorb(snap, merged, g.survivor, g.reasons)
                gone.update(g.duplicates)
            if not groups or len(units) <= EXACT_MAX:
                break
        else:
            self.unsettled.add(snap.cube)  # the next run reads the whole cube again
        return [Action("merge", snap.cube, [survivor, *dups],
                       "; ".join(f"{d[:10]}: {reason}" for d, reason in dups.items()))
                for survivor, dups in sorted(merged.items())]

    def absorb(self, snap: Snapshot, merged: dict[str, dict[str, str]], survivor: str, reasons: dict[str, str]) -> None:
        """Add a group of one dedupe pass to ``merged`` (survivor -> {duplicate: reason}). When a duplicate
        is the survivor of an earlier pass's group, that group joins this one: its members that are
        duplicates of this survivor itself (as within one pass), while the others are left alone. Never
        a chain (A into B, B into C), whose second merge would find B archived by the first."""
        absorbed = merged.setdefault(survivor, {})
        absorbed.update(reasons)
        for dup in reasons:
            for uid in merged.pop(dup, {}):
                reason = self._duplicate_of(snap, survivor, uid)
                if reason is not None:
                    absorbed[uid] = reason

    def _duplicate_of(self, snap: Snapshot, survivor: str, uid: str) -> str | None:
        """Why ``uid`` duplicates ``survivor`` (dedupe's test), or None."""
        from memos_cli.scheduler.dedupe import normalise, texts_agree

        rows = {u.id: i for i, u in enumerate(snap.units) if u.id in (survivor, uid)}
        a, b = snap.units[rows[survivor]], snap.units[rows[uid]]
        if normalise(a.text) == normalise(b.text):
            return "exact"
        policy = self.policy.duplicates
        cos = float(snap.vectors[rows[survivor]] @ snap.vectors[rows[uid]])
        agree, overlap = texts_agree(a.text, b.text, policy.text_similarity)
        return f"near (cosine {cos:.3f}, words {overlap:.2f})" if cos >= policy.similarity and agree else None

    def superseded(self, snap: Snapshot, used: set[str]) -> list[Action]:
        policy = self.policy.superseded
        if not policy.enabled:
            return []
        from memos_cli.scheduler import supersede

        units, vectors = snap.rows(lambda u: u.id not in used and u.kind in policy.kinds and u.valid_to is None
                                   and snap.compares(u.id))
        if policy.judge == "rules":
            found = supersede.find_superseded(units, vectors, similarity=policy.similarity, kinds=policy.kinds)
        else:
            found = self._judged(units, vectors)
        return [Action("supersede", snap.cube, [s.newer, s.older], s.reason, extra={"closes_at": s.closes_at})
                for s in found]

    def _judged(self, units: list[MemoryUnit], vectors: np.ndarray) -> list[Any]:
        """The LLM judge: the chat model says whether each close pair is an update."""
        from memos_cli.scheduler import supersede

        policy = self.policy.superseded
        pairs = supersede.candidate_pairs(units, vectors, similarity=policy.similarity, kinds=policy.kinds,
                                          limit=JUDGE_PAIRS)
        if not pairs:
            return []
        why = "the LLM judge of superseded facts"
        verdicts = Verdicts(self.store, self.models.identity(why))
        by_id = {u.id: u for u in units}
        closed: dict[str, Any] = {}  # older id -> its earliest replacement
        try:
            for older, newer, cos in pairs:
                if older in closed:
                    continue
                verdict = verdicts.get(by_id[older], by_id[newer])
                if verdict is None:
                    gen = self.models.get(why)
                    answer = complete(gen, supersede.judge_prompt(by_id[older].text, by_id[newer].text), 3, ["\n"])
                    self.report.judged += 1
                    verdict = verdicts.put(by_id[older], by_id[newer], bool(supersede.parse_verdict(answer)))
                else:
                    self.report.remembered += 1
                if verdict:
                    closed[older] = supersede.Supersession(older, newer, supersede.effective_time(by_id[newer]),
                                                           f"the chat model judged it an update (cosine {cos:.2f})")
        finally:
            if not self.report.dry_run:
                verdicts.save()
        return sorted(closed.values(), key=lambda s: (s.newer, s.older))

    def episodes(self, snap: Snapshot, used: set[str]) -> list[Action]:
        from memos_cli.scheduler import episodes

        policy = self.policy.episodes
        if not policy.summarise:
            return []
        cutoff = self.now - timedelta(days=policy.older_than_days)
        units, _ = snap.rows(lambda u: u.id not in used)
        groups = episodes.sessions(units, cutoff, policy.min_episodes)
        if not groups:
            return []
        gen = self.models.get("summarising episodes")
        actions = []
        for session in groups:
            for part in episodes.fit(session.turns, gen.count, gen.n_ctx - SUMMARY_PROMPT_ROOM - SUMMARY_TOKENS):
                try:
                    text = complete(gen, episodes.summary_prompt(part), SUMMARY_TOKENS, ["\n\n"])
                except MemosError as exc:  # a single turn longer than the model's context
                    text, why = "", str(exc)
                else:
                    why = "the model wrote nothing"
                if not text:
                    self.report.skipped.append(f"episodes in cube {snap.cube}: no summary of {session.label}: {why}")
                    continue
                actions.append(Action("summarise", snap.cube, [u.id for u in part],
                                      f"{len(part)} turns of {session.label}", extra={"text": text}))
        return actions


# ---- heat: activation memory -------------------------------------------------------------


def projected_hot_set(store: MemoryStore, cube: str, policy: ConsolidatePolicy, now: datetime,
                      gone: set[str]) -> list[MemoryUnit]:
    """For a dry run: the heat block after the plan, from the store as it is (``gone``: the units the
    plan archives or closes). A real run selects again once the plan is applied."""
    from memos_cli.activation.blocks import hot_units

    return hot_units(store, cube, policy.heat, now, leave_out=gone)


def plan_heat(store: MemoryStore, cube: str, hot: list[MemoryUnit], top: int, identity: Any,
              assess: bool = True) -> list[Action]:
    """Promote and demote: how the cube's heat block (``hot``: what it should hold) differs from the
    one built for this model; a block of the same units that went stale is refreshed (``assess``)."""
    from memos_cli import activation

    selection = activation.Selection(top=top)
    record = next((a for a in activation.records(store, cube) if a.selection == selection and a.matches(identity)),
                  None)
    before = [s["id"] for s in record.sources] if record is not None else []
    now_ids = [u.id for u in hot]
    actions = []
    entering = [i for i in now_ids if i not in before]
    leaving = [i for i in before if i not in now_ids]
    extra = {"selection": selection, "hot": hot}
    if record is not None and (entering or leaving) and _may_grow(store, record, hot, leaving, top, identity, assess):
        if not entering:
            return []  # only cooled units: they stay until the block is rebuilt
        stay = f"; {len(leaving)} that cooled stay until it is rebuilt" if leaving else ""
        return [Action("promote", cube, entering, f"appended to activation memory (top {top} by heat{stay})",
                       extra={**extra, "grown": before + entering})]
    if entering:
        actions.append(Action("promote", cube, entering,
                              f"into activation memory (pinned, and the top {top} by heat)", extra=extra))
    if leaving:
        actions.append(Action("demote", cube, leaving, "out of activation memory: cooler, cold, closed or gone",
                              extra=extra))
    if assess and record is not None and not actions and now_ids:
        activation.assess(store, record, identity)
        if record.status != "current":
            actions.append(Action("refresh", cube, now_ids,
                                  f"activation memory rebuilt: it was {record.status} ({record.reason})", extra=extra))
    return actions


def _may_grow(store: MemoryStore, record: Any, hot: list[MemoryUnit], leaving: list[str], top: int,
              identity: Any, assess: bool) -> bool:
    """Whether a heat block may grow at its end instead of being rebuilt: it is current, its pinned
    units are still the pinned ones, and at most ``top // 2`` of its units have cooled out of the top.

    New units are the hottest (by recency), so a block in heat order changes at its start after every
    few adds, and a rebuild prefills all of it (about 1.4 s for 20 units on 2 cores). Grown at its end,
    only the new units are prefilled (``activation.build`` keeps the rest of the saved state); the
    units that cooled stay in it until enough have piled up for a rebuild, in heat order, to be due."""
    before = [s["id"] for s in record.sources]
    pinned = [u.id for u in hot if u.pinned]
    if before[:len(pinned)] != pinned or len(leaving) > top // 2:
        return False
    if assess:
        from memos_cli import activation

        activation.assess(store, record, identity)
        return record.status == "current"
    return True
