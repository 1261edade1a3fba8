"""``memos scan``: secrets and personal data already in a store, and how to remove them.

Looks at every unit as committed (and, with ``history``, every version of
every unit file in any commit git can reach), then at what is derived from
units: activation memory (a KV cache holds the text of the unit versions it
was built from, and its preamble) and parametric memory (an adapter encodes
its source units), and at ``memos chat``'s line history. Not looked at: old
versions of the search table that LanceDB keeps until ``memos compact``
(they hold what the unit files held), copies outside the store (remotes,
backups). A finding names a
unit id and version, a field and a kind, never the matched text. The fix it
offers is ``memos purge`` (store, search table, caches, adapters and all of
history) or ``memos purge --in-history`` for ids only in history.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos_cli.plaintext import files
from memos_cli.privacy.detect import Detector

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

Progress = Callable[[str, int, int], None]
Key = tuple[str, int]  # (unit id, version)


@dataclass
class Finding:
    """Sensitive text found somewhere in the store."""

    where: str  # "unit" (as it is now), "history" (an older version, or a unit gone from the store),
    #             "kv" (an activation memory), "param" (a parametric memory), "chat-history"
    kind: str
    count: int = 1
    unit: str | None = None
    version: int | None = None
    field: str | None = None  # "text", "meta", "preamble"
    cache: str | None = None  # the activation memory's id
    param: str | None = None  # the parametric memory's name
    line: int | None = None  # of the chat line history

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ScanReport:
    kinds: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list)
    scanned: Counter[str] = field(default_factory=Counter)
    purge: list[str] = field(default_factory=list)  # ids in the store now
    purge_in_history: list[str] = field(default_factory=list)  # ids only in history
    chat_history: str | None = None  # the line history's path, when it has findings
    seconds: float = 0.0

    def commands(self) -> list[str]:
        """The commands that remove every finding."""
        out = []
        if self.purge:
            out.append("memos purge " + " ".join(self.purge) + " --yes")
        if self.purge_in_history:
            out.append("memos purge --in-history " + " ".join(self.purge_in_history) + " --yes")
        if self.chat_history and not out:  # any purge removes the line history too
            out.append(f"rm {shlex.quote(self.chat_history)}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "found": len(self.findings),
                "findings": [f.to_json() for f in self.findings], "scanned": dict(self.scanned),
                "purge": self.purge, "purge_in_history": self.purge_in_history, "commands": self.commands(),
                "seconds": round(self.seconds, 3)}


class _Units:
    """Findings by unit version, from unit files' bytes (parsed loosely: a damaged file is
    `memos check`'s business, not a reason to stop looking for secrets)."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.found: dict[Key, list[tuple[str, str, int]]] = {}  # (id, version) -> [(field, kind, count)]
        self.seen: set[Key] = set()

    def add(self, data: bytes | None) -> Key | None:
        try:
            doc = json.loads(data or b"")
            key = (str(doc["id"]), int(doc.get("version", 1)))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None
        if key in self.seen:
            return key
        self.seen.add(key)
        hits: list[tuple[str, str, int]] = []
        for name, text in (("text", doc.get("text")), ("meta", _strings(doc.get("meta")))):
            if isinstance(text, str) and text:
                for kind, n in Counter(f.kind for f in self.detector.find(text)).items():
                    hits.append((name, kind, n))
        if hits:
            self.found[key] = hits
        return key


def _strings(value: Any) -> str:
    """A meta value's strings, keys too, one per line."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_strings(v) for v in value)
    if isinstance(value, dict):
        return "\n".join(f"{k}\n{_strings(v)}" for k, v in value.items())
    return ""


def scan(store: MemoryStore, kinds: Iterable[str], *, history: bool = False,
         progress: Progress | None = None) -> ScanReport:
    """Look for ``kinds`` in the store (see the module's docstring)."""
    started = time.perf_counter()
    kinds = tuple(kinds)
    report = ScanReport(kinds=kinds)
    detector = Detector(kinds, phone_region=store.config.privacy.phone_region)
    units = _Units(detector)
    repo = store.repo
    head = repo.head()
    current: dict[str, int] = {}  # id -> version at HEAD
    if head:
        paths = repo.files(head, files.UNITS_DIR)
        for i, (_, data) in enumerate(repo.cat(f"{head}:{p}" for p in paths)):
            key = units.add(data)
            if key:
                current[key[0]] = key[1]
            if progress and i % 500 == 0:
                progress("scanning units", i, len(paths))
        report.scanned["units"] = len(current)
        if history:
            blobs = _history_blobs(store)
            for i, (_, data) in enumerate(repo.cat(blobs)):
                units.add(data)
                if progress and i % 500 == 0:
                    progress("scanning history", i, len(blobs))
            report.scanned["versions"] = len(units.seen)
    derived = _derived(store, report)
    missing = {uid for _, _, uid, version in derived if (uid, version) not in units.seen}
    if missing and head:
        for _, data in repo.cat(_versions_of(store, missing)):
            units.add(data)

    for (uid, version), hits in sorted(units.found.items()):
        now = current.get(uid) == version
        for name, kind, n in hits:
            report.findings.append(Finding("unit" if now else "history", kind, n, unit=uid, version=version, field=name))
    for where, ident, uid, version in derived:
        for name, kind, n in units.found.get((uid, version), []):
            report.findings.append(Finding(where, kind, n, unit=uid, version=version, field=name,
                                           **({"cache": ident} if where == "kv" else {"param": ident})))
    _chat_history(store, detector, report)

    named = dict.fromkeys(f.unit for f in report.findings if f.unit)
    report.purge = [u for u in named if u in current]
    report.purge_in_history = [u for u in named if u not in current]
    report.seconds = time.perf_counter() - started
    return report


def _derived(store: MemoryStore, report: ScanReport) -> list[tuple[str, str, str, int]]:
    """What activation and parametric memory were built from: (where, cache id or param name, unit, version).
    A cache holds the text of those unit versions (its record's preamble is made of them)."""
    from memos_cli.store import caches, params

    out: list[tuple[str, str, str, int]] = []
    activations = caches.records(store)
    for a in activations:
        out += [("kv", a.id, s["id"], int(s["version"])) for s in a.sources]
    records = params.records(store)
    for r in records:
        out += [("param", r.name, s["id"], int(s["version"])) for s in r.sources]
    report.scanned["caches"] = len(activations)
    report.scanned["params"] = len(records)
    return out


def _history_blobs(store: MemoryStore) -> list[str]:
    """Every blob under units/ in any commit git can reach (each once)."""
    out = store.repo.run(["rev-list", "--all", "--objects", "--filter=object:type=blob", "--", files.UNITS_DIR])
    blobs = []
    for line in out.splitlines():
        sha, _, path = line.partition(" ")
        if path and files.id_of(path):
            blobs.append(sha)
    return blobs


def _versions_of(store: MemoryStore, uids: set[str]) -> list[str]:
    """``commit:path`` of every committed version of these units (for caches and adapters built from
    versions that are no longer current)."""
    specs = []
    for uid in sorted(uids):
        path = files.unit_path(uid)
        for commit in store.repo.run(["log", "--all", "--format=%H", "--", path]).split():
            specs.append(f"{commit}:{path}")
    return specs


def _chat_history(store: MemoryStore, detector: Detector, report: ScanReport) -> None:
    from memos_cli.store.purge import chat_history_path

    path = chat_history_path(store)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    report.scanned["chat_lines"] = len(lines)
    for n, line in enumerate(lines, 1):
        for kind, count in Counter(f.kind for f in detector.find(line)).items():
            report.findings.append(Finding("chat-history", kind, count, line=n))
            report.chat_history = str(path)
