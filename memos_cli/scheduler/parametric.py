"""The scheduler's parametric step: find the adapters whose source units changed, report them,
and learn them again from the units as they are now when the policy asks (off by default: learning
takes minutes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError

if TYPE_CHECKING:
    from memos_cli.scheduler.model import ModelSlot
    from memos_cli.scheduler.report import Report
    from memos_cli.store.policy import ConsolidatePolicy
    from memos_cli.store.store import MemoryStore


def review(store: MemoryStore, policy: ConsolidatePolicy, report: Report, cubes: list[str], models: ModelSlot,
           identity: Any, dry_run: bool) -> None:
    """Fill ``report.parametric``; relearn the stale LoRA adapters when ``[consolidate.parametric]
    relearn`` is on (and this is not a dry run)."""
    from memos_cli.store import params

    found = [r for r in params.records(store) if r.cube in cubes]
    if not found:
        return
    states = params.statuses(store, found, identity.sha256 if identity is not None else None)
    for record, (state, reason) in zip(found, states, strict=True):
        if state != "stale":
            continue
        entry: dict[str, Any] = {"name": record.name, "kind": record.kind, "status": state, "reason": reason,
                                 "action": "reported"}
        report.parametric.append(entry)
        if record.kind != "lora" or not policy.parametric.relearn:
            continue
        if dry_run:
            entry["action"] = "would relearn"
            continue
        try:
            entry["action"] = relearn(store, record, models)
        except MemosError as exc:
            entry["action"] = f"not relearned: {exc}"


def relearn(store: MemoryStore, record: Any, models: ModelSlot) -> str:
    """Learn ``record`` again, with its options, from its source units that are still active."""
    from memos_cli.parametric.learn import learn, passes_gate, to_record
    from memos_cli.parametric.lora import LoraOptions
    from memos_cli.store import params

    units = [u for u in store.get_many([s["id"] for s in record.sources]) if u.status == "active"]
    if not units:
        return f"not relearned: none of its source units is active (`memos param rm {record.name}`)"
    known = set(LoraOptions.__dataclass_fields__)
    hparams = {k: v for k, v in record.hparams.items() if k in known}
    if "targets" in hparams:
        hparams["targets"] = tuple(hparams["targets"])
    options = LoraOptions(**hparams)
    generator = models.get(f"relearning {record.name}")
    learned = learn(generator, units, options)
    ok, why = passes_gate(learned)
    report = {**record.report, "gate": {"passed": ok, "why": why}, "accuracy": round(learned.accuracy, 4),
              "relearned": True}
    new, blob = to_record(record.name, record.cube, generator, units, learned, enabled=record.enabled and ok,
                          report=report)
    new.scale, new.gate = record.scale, record.gate
    params.save(store, new, blob, replace=True)
    return f"relearned from {len(units)} units" + ("" if ok else f" (disabled: {why})")
