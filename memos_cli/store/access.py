"""Access counts: recall does not commit; the next write folds what was recalled into the units."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from memos_cli.plaintext.units import iso, utcnow
from memos_cli.store import layout
from memos_cli.store.commit import Transaction


class AccessCounts:
    """``MemoryStore``'s access counts (a mixin: ``self`` is the store)."""

    @property
    def _access_log(self) -> Path:
        return self.state_dir / "access.jsonl"

    @property
    def _access_folding(self) -> Path:
        return self.state_dir / "access.folding.jsonl"

    def log_access(self, ids: Iterable[str]) -> None:
        """Count a read of these units (no lock, no commit)."""
        ids = list(ids)
        if not ids or not self.state_dir.parent.is_dir():
            return
        stamp = iso(utcnow())
        data = "".join(json.dumps({"id": i, "t": stamp}) + "\n" for i in ids).encode()
        try:
            self.state_dir.mkdir(mode=0o700, exist_ok=True)
            layout.append(self._access_log, data)
        except OSError:
            pass  # a store we may read but not write: usage is not counted

    @staticmethod
    def _read_access(path: Path) -> dict[str, tuple[int, str]]:
        counts: dict[str, tuple[int, str]] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return counts
        for line in lines:
            try:
                rec = json.loads(line)
                uid, stamp = str(rec["id"]), str(rec["t"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed reader
            n, last = counts.get(uid, (0, ""))
            counts[uid] = (n + 1, max(last, stamp))
        return counts

    def pending_access(self) -> dict[str, tuple[int, str]]:
        pending = self._read_access(self._access_log)
        for uid, (n, last) in self._read_access(self._access_folding).items():
            m, other = pending.get(uid, (0, ""))
            pending[uid] = (n + m, max(last, other))
        return pending

    def _fold_access_log(self, txn: Transaction) -> int:
        """Move pending access counts into the units (inside a transaction)."""
        if not self._access_log.exists() and not self._access_folding.exists():
            return 0
        if self._access_log.exists():
            if self._access_folding.exists():
                self._unfold_access_log()
            os.replace(self._access_log, self._access_folding)
        counts = self._read_access(self._access_folding)
        if not counts:
            return 0
        from memos_cli.plaintext.units import parse_time

        units = self._units_by_id(list(counts))
        edited = set(self.hand_edited(u.id for u in units))
        if edited:  # their counts wait in the log until the hand edit is committed (or undone)
            self._hold_back_access(edited)
            units = [u for u in units if u.id not in edited]
            self.notices.append(
                f"left {len(edited)} hand-edited unit file{'s' if len(edited) != 1 else ''} alone "
                f"({', '.join(sorted(edited)[:3])}{' ...' if len(edited) > 3 else ''}): their access counts "
                "wait until the change is committed with git or undone")
        for u in units:
            n, last = counts[u.id]
            u.access_count += n
            u.last_accessed = parse_time(last)
        self.save(txn, units)
        return len(units)

    def _hold_back_access(self, ids: set[str]) -> None:
        """Take these units' records out of the fold in progress and put them back in the log."""
        keep, back = [], []
        for line in self._access_folding.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                uid = json.loads(line).get("id")
            except (ValueError, AttributeError):
                uid = None
            (back if uid in ids else keep).append(line)
        tmp = self._access_folding.with_name(self._access_folding.name + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, self._access_folding)  # a kill from here on loses those counts, never doubles them
        layout.append(self._access_log, "".join(back).encode())

    def _unfold_access_log(self) -> None:
        """Give back counts whose fold did not commit."""
        if not self._access_folding.exists():
            return
        layout.append(self._access_log, self._access_folding.read_bytes())
        self._access_folding.unlink()
