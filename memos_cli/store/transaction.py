"""Writing: the lock, the journal, recovery, schema upgrades, and ``transaction()``, the only way to write.

See ``store`` for how a transaction lands as one commit or not at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from memos_cli.errors import MemosError, StoreError, UsageError
from memos_cli.lock import StoreLock
from memos_cli.plaintext import files
from memos_cli.plaintext.units import MemoryUnit, default_user, iso, utcnow
from memos_cli.store import killpoint, layout
from memos_cli.store.commit import Transaction
from memos_cli.store.config import SCHEMA_VERSION


class Transactions:
    """``MemoryStore``'s writing machinery (a mixin: ``self`` is the store)."""

    @property
    def _journal(self) -> Path:
        return self.state_dir / "journal.json"

    def _lock_for(self, timeout: float | None = None) -> StoreLock:
        if timeout is None:
            env = os.environ.get("MEMOS_LOCK_TIMEOUT")
            try:
                timeout = float(env) if env else self.config.lock_timeout
            except ValueError:
                raise UsageError(f"bad MEMOS_LOCK_TIMEOUT {env!r}: use a number of seconds") from None
        return StoreLock(self.state_dir / "lock", timeout)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock for a write outside git (derived data such as
        activation caches): waits like any writer, makes no commit."""
        self._check_writable()
        lock = self._lock_for()
        lock.acquire()
        try:
            self._recover_locked()
            yield
        finally:
            lock.release()

    def recover(self) -> bool:
        """If a write was cut off, put the store back to its last commit.

        Takes the lock without waiting; when a writer is busy, leaves it be.
        """
        from memos_cli.store.purge import journal_path

        if not self.exists() or not (self._journal.exists() or journal_path(self).exists()):
            return False
        lock = self._lock_for(0)
        if not lock.acquire(blocking=False):
            return False
        try:
            recovered = self._recover_locked()
            if recovered and self.config.schema_version >= SCHEMA_VERSION:  # a write that had committed
                self._follow_locked()  # left the table's marker behind: catch it up (an old store: its upgrade does)
            return recovered
        finally:
            lock.release()

    def _recover_locked(self) -> bool:
        recovered = self._undo_interrupted_locked()
        from memos_cli.store.purge import resume  # a purge cut off is carried through to the end, never undone

        return resume(self) or recovered

    def _undo_interrupted_locked(self) -> bool:
        if not self._journal.exists():
            return False
        try:
            info = json.loads(self._journal.read_text(encoding="utf-8") or "{}")
        except ValueError:
            info = {}
        head = self.repo.head() or ""
        committed = bool(info.get("head")) and info["head"] != head
        self._undo_files(None if info.get("scope") == "all" else self._journal_paths())
        if committed:  # its folded access counts are in that commit; the table is synced below
            self._access_folding.unlink(missing_ok=True)
        else:
            self._unfold_access_log()
            if "table_version" in info:
                self.table.restore(info["table_version"])
        self._drop_journal()
        self._table = None
        self._config = None  # an undone upgrade leaves the old settings
        what = f"an interrupted {info.get('op', 'write')} (pid {info.get('pid', '?')}, started {info.get('started', '?')})"
        if committed:
            self.notices.append(f"{what} had committed before it stopped; the store is at {head[:10]}")
        else:
            self.notices.append(
                f"recovered from {what}: its changes were undone; the store is back at its last commit {head[:10]}"
            )
        return True

    @property
    def _journal_files(self) -> Path:
        return self.state_dir / "journal.paths"

    def _note_paths(self, txn: Transaction, paths: list[str]) -> None:
        """Record the files a write is about to touch, so that undoing it touches only them."""
        txn.paths.update(paths)
        layout.append(self._journal_files, "".join(p + "\n" for p in paths).encode())

    def _undo_files(self, paths: Iterable[str] | None) -> None:
        """Put these unit files (None: the whole work tree) back as HEAD has them."""
        paths = None if paths is None else list(paths)
        self.repo.restore(paths)
        for path in paths or []:  # a write killed between writing a file's bytes and renaming them
            (self.root / files.temp_path(path)).unlink(missing_ok=True)

    def _journal_paths(self) -> list[str]:
        try:
            return [p for p in self._journal_files.read_text(encoding="utf-8").splitlines() if p]
        except FileNotFoundError:
            return []

    def _drop_journal(self) -> None:
        self._journal_files.unlink(missing_ok=True)
        self._journal.unlink(missing_ok=True)

    def _upgrade_locked(self) -> None:
        """Bring a store of an older schema to ``SCHEMA_VERSION``, in one commit.

        Schema 1 kept the LanceDB table itself in git; schema 2 keeps one file
        per unit; schema 3 lets units be ``pinned`` (the files of schema 2 are
        valid schema 3 as they are). A schema-1 store goes straight to 3. The
        search table is left to the catching up that follows: its marker names no
        table format or an old one, so it is rebuilt, reusing its vectors.
        """
        old = self.config.schema_version
        if old >= SCHEMA_VERSION:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._journal.write_text(json.dumps({"op": "upgrade", "scope": "all", "head": self.repo.head(),
                                             "pid": os.getpid(), "started": iso(utcnow())}), encoding="utf-8")
        units: list[MemoryUnit] = []
        details = []
        if old < 2:
            units = self.table.units(None) if self.table.exists() else []
            for unit in units:
                files.write(self.root, unit)
            self.repo.git.rm("-r", "--cached", "-q", "--ignore-unmatch", layout.TABLES_DIR, ".gitattributes")
            (self.root / ".gitattributes").unlink(missing_ok=True)
            layout.write_gitignore(self.root)
            self.repo.ensure_settings()
            details.append("The LanceDB table is now derived data outside git.")
        if old < 3:
            details.append("Units may now be pinned (always in context).")
        self.config.schema_version = SCHEMA_VERSION
        self.config_path.write_text(self.config.to_toml(), encoding="utf-8")
        summary = f", {len(units)} units as files" if old < 2 else ""
        self.repo.commit_all(
            f"upgrade: schema {old} -> {SCHEMA_VERSION}{summary}\n\n" + "\n".join(details) + "\n\n"
            f"Memos-Op: upgrade\nMemos-Units: {len(units)}\nMemos-Cube: *\nMemos-User: {default_user()}\n",
            default_user(),
        )
        if old < 2:
            self.table.unmark()  # the table that was in git: rebuilt from the files by the catching up that follows
        self._drop_journal()
        what = f"{len(units)} units are now files in git" if old < 2 else "memories can now be pinned"
        self.notices.append(f"upgraded the store from schema {old} to schema {SCHEMA_VERSION}: {what}")

    def _follow_locked(self) -> bool:
        """Bring the table to HEAD (under the lock); whether anything was done."""
        from memos_cli.store.follow import catch_up, is_current

        if not is_current(self):
            done = catch_up(self)
            if done:
                self.notices.append(done)
                return True
        return False

    def _ensure_current(self) -> None:
        """Before a read: make sure the table reflects HEAD, if no writer is busy.

        Costs two small file reads when it does (every write by memos keeps
        them in step); a writer at work is left alone and its table read as is.
        """
        from memos_cli.store.follow import is_current

        if self.config.schema_version >= SCHEMA_VERSION and is_current(self):
            return
        lock = self._lock_for(0)
        try:
            if not lock.acquire(blocking=False):
                return
        except OSError:
            return  # a store we may read but not write
        try:
            self._recover_locked()
            self._upgrade_locked()
            caught_up = self._follow_locked()
        finally:
            lock.release()
        if caught_up:
            self.upkeep()  # the rows it wrote, into the indexes

    @contextmanager
    def transaction(self, op: str, *, cube: str = "default", user: str | None = None,
                    fold_access: bool = True) -> Iterator[Transaction]:
        """Everything written inside lands as one commit, or not at all.

        ``fold_access=False``: pending access counts stay in the log for the next write (a sync, whose
        files must be exactly those it merged).
        """
        if not self.exists():
            self.init()
        self._check_writable()
        self._prepare_write()  # imports and opening: slow, so not under the lock
        lock = self._lock_for()
        lock.acquire()
        try:
            self._recover_locked()
            self._upgrade_locked()
            self._follow_locked()
            self.table.refresh_writer()  # another writer may have written since it was opened
            txn = Transaction(op=op, cube=cube, user=user or default_user())
            self.state_dir.mkdir(parents=True, exist_ok=True)
            journal = {"op": op, "head": self.repo.head(), "table_version": self.table.version,
                       "pid": os.getpid(), "started": iso(utcnow())}
            self._journal_files.unlink(missing_ok=True)
            self._journal.write_text(json.dumps(journal), encoding="utf-8")
            committed = False
            keep_journal = False
            try:
                txn.folded_accesses = self._fold_access_log(txn) if fold_access else 0
                yield txn
                killpoint.reached("written")
                txn.commit = self.repo.commit(txn.paths, txn.message(), txn.user, allow_empty=txn.allow_empty,
                                              merged=txn.merged, fast_forward=txn.fast_forward)
                committed = True
                killpoint.reached("committed")
                self._access_folding.unlink(missing_ok=True)  # those counts are in the commit now
                self.table.mark(self.repo.head())
                self.table.cleanup()
                for step in txn.after_commit:
                    step()
            except BaseException as exc:
                if not committed:
                    try:
                        self._undo_files(txn.paths)
                        self.table.restore(journal["table_version"])
                        self._unfold_access_log()
                    except Exception as undo_error:  # the original error is the one to raise
                        # Keep the journal: the next command (which repairs the index first) undoes it.
                        keep_journal = True
                        exc.add_note(f"undoing the failed {op} failed too ({layout.one_line(undo_error)}); "
                                     "the next memos command will undo it")
                    finally:
                        self._table = None
                raise
            finally:
                if not keep_journal:
                    self._drop_journal()
        finally:
            lock.release()
        # After the lock: a repack of the loose objects (git gc --auto) took 2-5 s at 100k units, and
        # git's own locks make it safe beside other writers' commits. The write is done whatever it says.
        try:
            self.repo.maybe_pack()
        except MemosError:
            pass
        if not txn.skip_upkeep:
            self.upkeep()

    def _prepare_write(self) -> None:
        """Import and open what a write uses before its lock is taken (gitpython, Lance: about 1 s on
        a cold start), so that the lock is held only for the write itself."""
        self.repo.warm()  # imports gitpython, starts its object reader
        from memos_cli.store import follow, purge  # noqa: F401 - recovery and catching the table up use them under the lock

        if self.table.exists():
            self.table.open_writer()

    def save(self, txn: Transaction, units: list[MemoryUnit], *, new: bool = False) -> None:
        """Write these units (with their vectors) as files and table rows, inside ``txn``."""
        if not units:
            return
        width = self.table.dim
        for unit in units:
            if unit.vector is None or (width is not None and len(unit.vector) != width):
                self.check_dim()  # names the model mismatch, if that is it
                raise StoreError(f"unit {unit.id} has no vector of the table's width ({width})")
        if not new:  # before the paths are noted: an undo puts noted paths back as HEAD has them
            self._refuse_hand_edited([u.id for u in units if files.unit_path(u.id) not in txn.paths])
        self._note_paths(txn, [files.unit_path(u.id) for u in units])
        for unit in units:
            files.write(self.root, unit)
        if new:
            self.table.add(units)
        else:
            self.table.upsert(units)

    def hand_edited(self, ids: Iterable[str]) -> list[str]:
        """Those of these units whose file has changes not committed (edited by hand): a write must
        not overwrite them, as the table (which the write starts from) does not have them."""
        by_path = {files.unit_path(uid): uid for uid in ids}
        if not by_path:
            return []
        return sorted(by_path[p] for p in self.repo.modified(by_path))

    def _refuse_hand_edited(self, ids: list[str]) -> None:
        """Under the store's lock: refuse when one of these units' files was edited by hand."""
        edited = self.hand_edited(ids)
        if edited:
            path = files.unit_path(edited[0])
            more = f" (and {len(edited) - 1} more)" if len(edited) > 1 else ""
            raise StoreError(
                f"{path}{more} has changes not committed with git (edited by hand?); memos will not overwrite "
                f"them: commit them (git -C {self.root} commit -a) or undo them (git -C {self.root} checkout -- "
                f"{path}), then try again; nothing was written")

    def drop(self, txn: Transaction, ids: list[str]) -> None:
        """Remove these units' files and rows, inside ``txn`` (purge; everything else archives)."""
        self._note_paths(txn, [files.unit_path(uid) for uid in ids])
        for uid in ids:
            files.remove(self.root, uid)
        self.table.delete(ids)
