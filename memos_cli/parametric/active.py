"""The parametric memories a chat uses: which, at what scale, and, for adapters, per question.

A chat's candidates are the cube's enabled parametric memories and those
named with ``--param NAME[=SCALE]`` (which sets the scale and makes a
disabled one a candidate); ``--no-param`` leaves all out. Each is read from
the store, its blob verified (hash, tensors) and checked against the chat
model's identity: llama.cpp checks only tensor names and shapes, so a blob
for another model of the same shape would load and mislead.

- Steering vectors are summed, each times its scale, and set for the whole
  session (before the head is evaluated: they change its KV state too).
- LoRA adapters are loaded once and *routed* per question (``routing``):
  applied only to questions about what they learned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.errors import ModelError, UsageError
from memos_cli.parametric.routing import FLOOR, Decision, Router

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator
    from memos_cli.store.params import ParamRecord
    from memos_cli.store.store import MemoryStore


def parse_number(value: str, what: str) -> float:
    """A finite number given as text (a scale, a strength), or ``UsageError``."""
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"bad {what} {value!r}: use a number, e.g. 0.5") from None
    if not np.isfinite(number):
        raise UsageError(f"bad {what} {value!r}: use a finite number")
    return number


def parse_param(spec: str) -> tuple[str, float | None]:
    """``NAME`` or ``NAME=SCALE`` (``--param``)."""
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"bad --param {spec!r}: use NAME or NAME=SCALE")
    if not sep:
        return name, None
    return name, parse_number(value, f"--param {spec!r} scale")


@dataclass
class Member:
    record: ParamRecord
    scale: float
    named: bool  # named with --param (else: enabled)
    adapter: Any = None  # a loaded LoRA adapter
    direction: np.ndarray | None = None  # a steering vector
    keys: np.ndarray | None = None
    key_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.record.name, "kind": self.record.kind, "scale": self.scale,
                "source": "--param" if self.named else "enabled"}


class ParametricSet:
    """Loads the candidates into ``generator``; ``route`` picks the adapters for a question."""

    def __init__(self, store: MemoryStore, generator: Generator, cube: str, named: dict[str, float | None],
                 use_enabled: bool = True) -> None:
        from memos_cli.store import params

        self.generator = generator
        self.members: list[Member] = []
        self.notices: list[str] = []
        self._router: Router | None = None
        self._store = store
        wanted: dict[str, Member] = {}
        for name, scale in named.items():
            record = params.get(store, name)
            wanted[record.name] = Member(record, record.scale if scale is None else scale, True)
        if use_enabled:
            for record in params.records(store, cube):
                if record.enabled and record.name not in wanted:
                    wanted[record.name] = Member(record, record.scale, False)
        for member in wanted.values():
            if self._load(store, member):
                self.members.append(member)
        self._apply_steering()

    def _load(self, store: MemoryStore, member: Member) -> bool:
        from memos_cli.store import params

        record, identity = member.record, self.generator.identity
        if record.model.get("sha256") != identity.sha256:
            why = (f"parametric memory {record.name} was made for another model "
                   f"({record.model.get('name', '?')} {str(record.model.get('sha256', ''))[:12]}), "
                   f"not {identity.name} {identity.sha256[:12]}")
            if member.named:
                raise ModelError(why)
            self.notices.append(why + "; it is not used")
            return False
        data = params.read_blob(store, record)  # its hash, metadata and shapes checked: one line if damaged
        tensors, meta = params.decode_blob(data)
        if record.kind == "lora":
            alpha = float(meta.get("alpha", "0") or 0)
            member.adapter = self.generator.load_lora(tensors, alpha, record.name)
        else:
            direction = tensors["direction"]
            if direction.shape != (self.generator.n_layer - 1, self.generator.n_embd):
                raise ModelError(f"steering vector {record.name} has shape {direction.shape}, which does not fit "
                                 f"this model ({self.generator.n_layer - 1}, {self.generator.n_embd})")
            member.direction = direction
        return True

    def _apply_steering(self) -> None:
        steer = [m for m in self.members if m.direction is not None and m.scale != 0.0]
        if not steer:
            return
        total = np.zeros_like(steer[0].direction, dtype=np.float32)
        for member in steer:
            assert member.direction is not None
            total += np.float32(member.scale) * member.direction
        digest = hashlib.sha256(json.dumps(sorted((m.record.blob, m.scale) for m in steer)).encode()).hexdigest()
        self.generator.set_steering(total, digest[:16])

    @property
    def adapters(self) -> list[Member]:
        return [m for m in self.members if m.adapter is not None]

    def _keys(self, member: Member) -> None:
        if member.keys is not None:
            return
        if self._router is None:
            self._router = Router(self._store.embedder)
        units = self._store.get_many([s["id"] for s in member.record.sources])
        member.keys, member.key_ids = self._router.keys(units)

    def route(self, question: str) -> list[dict[str, Any]]:
        """Apply the adapters that are about ``question`` (none when none is); what was used and why."""
        used: list[dict[str, Any]] = []
        chosen: list[tuple[Any, float]] = []
        vector = None
        for member in self.members:
            entry = member.to_json()
            if member.adapter is None:
                entry.update(applied=member.scale != 0.0, why="a steering vector applies to every turn")
                used.append(entry)
                continue
            self._keys(member)
            assert self._router is not None and member.keys is not None
            if vector is None:
                vector = self._router.question(question)
            floor = member.record.gate if member.record.gate is not None else FLOOR
            decision: Decision = self._router.decide(vector, member.keys, member.key_ids, floor)
            entry.update(decision.to_json())
            if decision.applied and member.scale != 0.0:
                chosen.append((member.adapter, member.scale))
            elif decision.applied:
                entry.update(applied=False, why="its scale is 0")
            used.append(entry)
        if self.adapters:
            self.generator.use_loras(chosen)
        return used
