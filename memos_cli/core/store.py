"""``MemoryStore``: one memory directory, a git repository of unit files.

The memory is one JSON file per unit (``files``), versioned by git; the
LanceDB table that searches it is derived data outside git (``sync``).

Writes go through ``transaction()``: take the lock, note in a journal the
commit the store is at and the table's version, write the unit files and the
table rows, commit the changed files as one git commit, move the table's
marker to it, drop the journal. A write that fails, or a process killed in the
middle, leaves the journal behind; the next command that takes the lock finds
it, puts the files back to that commit and the table back to that version
(``recover``), and says so.

Access counts: recall does not commit. Each recall appends the ids it returned
to ``.git/memos/access.jsonl`` (unversioned, append-only, no lock needed). The
next write folds the pending counts into ``access_count`` and
``last_accessed`` inside its own commit, so they reach history with the next
change of memory; reads of a unit add the pending counts on the fly.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import files, killpoint
from .config import CONFIG_NAME, SCHEMA_VERSION, StoreConfig
from .errors import LockedError, MemosError, NotFoundError, StoreError, UsageError
from .lock import StoreLock
from .policy import toml_literal
from .units import MemoryUnit, build_unit, default_user, iso, utcnow

if TYPE_CHECKING:
    from ..models.embedder import Embedder
    from .repo import StoreRepo
    from .retrieval import Filters, Hit
    from .table import UnitTable

TABLES_DIR = "tables"
RUN_LOCK = "consolidate.lock"  # in the state dir: see MemoryStore.run_lock_path
EMBED_BATCH = 256


@dataclass
class Transaction:
    """What one write did; becomes the commit message."""

    op: str
    cube: str = "default"
    user: str = ""
    ids: list[str] = field(default_factory=list)
    summary: str = ""  # replaces the "N units" part of the first line
    details: list[str] = field(default_factory=list)  # more lines for the message body
    trailers: dict[str, str] = field(default_factory=dict)  # more Memos-* trailers
    folded_accesses: int = 0
    paths: set[str] = field(default_factory=set)  # files written or removed (units; memos.toml for op config)
    commit: str | None = None  # the new commit, once made
    allow_empty: bool = False  # commit even when no file changed
    after_commit: list[Callable[[], object]] = field(default_factory=list)  # run under the lock
    # No upkeep of the table after this write (``MemoryStore.upkeep``): a consolidate slice, as the run
    # compacts the table at its end, and folding rows into an index after each slice would only slow it.
    skip_upkeep: bool = False

    def message(self) -> str:
        n = len(self.ids)
        what = self.summary or f"{n} unit{'s' if n != 1 else ''}"
        head = f"{self.op}: {what} (cube {self.cube}, user {self.user})"
        body = []
        if self.ids:
            shown = self.ids if n <= 20 else self.ids[:10] + ["..."] + self.ids[-5:]
            body.append("ids: " + " ".join(shown))
        body += self.details
        if self.folded_accesses:
            body.append(f"access counts folded in for {self.folded_accesses} units")
        trailers = [f"Memos-Op: {self.op}", f"Memos-Units: {n}", f"Memos-Cube: {self.cube}", f"Memos-User: {self.user}",
                    *[f"{key}: {value}" for key, value in self.trailers.items()]]
        return "\n\n".join([head, *(["\n".join(body)] if body else []), "\n".join(trailers)]) + "\n"


class MemoryStore:
    """The memory directory: open it, read it, and write to it one commit at a time."""

    def __init__(self, root: str | os.PathLike[str], *, embedder: Embedder | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a memos store")
        self.notices: list[str] = []  # things the user should hear about (recoveries)
        self._config: StoreConfig | None = None
        self._repo: StoreRepo | None = None
        self._table: UnitTable | None = None
        self._embedder = embedder
        self._embedder_thread: threading.Thread | None = None
        self._embedder_error: BaseException | None = None

    # ---- the directory -------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def exists(self) -> bool:
        return self.config_path.is_file() and (self.root / ".git").is_dir()

    @property
    def config(self) -> StoreConfig:
        if self._config is None:
            if not self.exists():
                raise StoreError(f"no memos store at {self.root}; create one with `memos init` or `memos add`")
            self._config = StoreConfig.load(self.config_path)
        return self._config

    @property
    def repo(self) -> StoreRepo:
        if self._repo is None:
            from .repo import StoreRepo

            self.config  # noqa: B018 - refuses a missing or too-new store first
            self._repo = StoreRepo(self.root)
        return self._repo

    @property
    def state_dir(self) -> Path:
        return self.root / ".git" / "memos"

    def _check_writable(self) -> None:
        """Try to create a file where the store is (or will be): permissions alone
        do not tell, e.g. for root or on a read-only file system."""
        probe_dir = self.root if self.root.exists() else self._nearest_existing_parent()
        try:
            fd, name = tempfile.mkstemp(prefix=".memos-probe-", dir=probe_dir)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise StoreError(f"cannot write to {probe_dir}: {exc.strerror or exc}") from None

    def _nearest_existing_parent(self) -> Path:
        parent = self.root
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StoreError(f"{parent} is a file, so {self.root} cannot be created")
        return parent

    def init(self) -> bool:
        """Create the store if it is not there; True when it was created."""
        if self.exists():
            self.config  # noqa: B018 - validates the schema version
            return False
        self._check_writable()
        # Two first writers may race here; the parent directory's lock makes one
        # of them create the store and the other find it made.
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root.parent, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"cannot create {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.exists():
                self.config  # noqa: B018
                return False
            return self._create()
        finally:
            os.close(fd)  # releases the lock

    def _create(self) -> bool:
        if self.root.exists() and any(self.root.iterdir()):
            raise StoreError(f"{self.root} exists and is not a memos store; choose an empty or new directory")
        from .repo import StoreRepo

        created_root = not self.root.exists()
        try:
            # Private whatever the umask (memory is personal): the root 0700, so no one else
            # reaches anything in it, and the files memos writes 0600 (see files.FILE_MODE).
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, files.DIR_MODE)
            repo = StoreRepo.init(self.root)
            cfg = StoreConfig()
            files.write_private(self.config_path, cfg.to_toml().encode())
            _write_gitignore(self.root)
            (self.root / TABLES_DIR).mkdir(mode=files.DIR_MODE, exist_ok=True)
            repo.commit_all(f"init: memos store (schema {cfg.schema_version})\n\nMemos-Op: init\n", default_user())
        except MemosError:
            raise
        except Exception as exc:
            # Leave nothing half-made behind.
            if created_root:
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                for child in self.root.iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
            raise StoreError(f"could not create a store at {self.root}: {exc}") from None
        self._config = cfg
        self._repo = repo
        self.table.mark(repo.head())
        return True

    # ---- tables and models -------------------------------------------------

    @property
    def table(self) -> UnitTable:
        if self._table is None:
            from .table import UnitTable

            self.config  # noqa: B018 - refuses a missing or too-new store first
            self._table = UnitTable(self.root / TABLES_DIR)
        return self._table

    def preload_embedder(self) -> None:
        """Start loading the embedding model in a thread (llama.cpp releases the GIL)."""
        if self._embedder is not None or self._embedder_thread is not None:
            return

        def load() -> None:
            try:
                self._embedder = self._load_embedder()
            except BaseException as exc:  # re-raised in the caller's thread
                self._embedder_error = exc

        self._embedder_thread = threading.Thread(target=load, daemon=True)
        self._embedder_thread.start()

    def _load_embedder(self) -> Embedder:
        from ..models.embedder import Embedder
        from ..models.registry import resolve_embedding_model

        # The first write creates the store, after embedding: use the default config until then.
        config = self.config if self.exists() else StoreConfig()
        return Embedder(resolve_embedding_model(config.embedding_model))

    @property
    def embedder(self) -> Embedder:
        if self._embedder_thread is not None:
            self._embedder_thread.join()
            self._embedder_thread = None
            if self._embedder_error is not None:
                error, self._embedder_error = self._embedder_error, None
                raise error
        if self._embedder is None:
            self._embedder = self._load_embedder()
        return self._embedder

    # ---- transactions --------------------------------------------------------

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
        from .purge import journal_path

        if not self.exists() or not (self._journal.exists() or journal_path(self).exists()):
            return False
        lock = self._lock_for(0)
        if not lock.acquire(blocking=False):
            return False
        try:
            recovered = self._recover_locked()
            if recovered and self.config.schema_version >= SCHEMA_VERSION:  # a write that had committed
                self._sync_locked()  # left the table's marker behind: catch it up (an old store: its upgrade does)
            return recovered
        finally:
            lock.release()

    def _recover_locked(self) -> bool:
        recovered = self._undo_interrupted_locked()
        from .purge import resume  # a purge cut off is carried through to the end, never undone

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
        _append(self._journal_files, "".join(p + "\n" for p in paths).encode())

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
        search table is left to the sync that follows: its marker names no
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
            self.repo.git.rm("-r", "--cached", "-q", "--ignore-unmatch", TABLES_DIR, ".gitattributes")
            (self.root / ".gitattributes").unlink(missing_ok=True)
            _write_gitignore(self.root)
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
            self.table.unmark()  # the table that was in git: rebuilt from the files by the sync that follows
        self._drop_journal()
        what = f"{len(units)} units are now files in git" if old < 2 else "memories can now be pinned"
        self.notices.append(f"upgraded the store from schema {old} to schema {SCHEMA_VERSION}: {what}")

    def _sync_locked(self) -> bool:
        """Bring the table to HEAD (under the lock); whether anything was done."""
        from .sync import is_current, sync

        if not is_current(self):
            done = sync(self)
            if done:
                self.notices.append(done)
                return True
        return False

    def _ensure_current(self) -> None:
        """Before a read: make sure the table reflects HEAD, if no writer is busy.

        Costs two small file reads when it does (every write by memos keeps
        them in step); a writer at work is left alone and its table read as is.
        """
        from .sync import is_current

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
            synced = self._sync_locked()
        finally:
            lock.release()
        if synced:
            self.upkeep()  # the rows the sync wrote, into the indexes

    @contextmanager
    def transaction(self, op: str, *, cube: str = "default", user: str | None = None) -> Iterator[Transaction]:
        """Everything written inside lands as one commit, or not at all."""
        if not self.exists():
            self.init()
        self._check_writable()
        self._prepare_write()  # imports and opening: slow, so not under the lock
        lock = self._lock_for()
        lock.acquire()
        try:
            self._recover_locked()
            self._upgrade_locked()
            self._sync_locked()
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
                txn.folded_accesses = self._fold_access_log(txn)
                yield txn
                killpoint.reached("written")
                txn.commit = self.repo.commit(txn.paths, txn.message(), txn.user, allow_empty=txn.allow_empty)
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
                        exc.add_note(f"undoing the failed {op} failed too ({_one_line(undo_error)}); "
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
        from . import purge, sync  # noqa: F401 - recovery and the table's sync use them under the lock

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

    # ---- access counts ---------------------------------------------------------

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
            _append(self._access_log, data)
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
        from .units import parse_time

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
        _append(self._access_log, "".join(back).encode())

    def _unfold_access_log(self) -> None:
        """Give back counts whose fold did not commit."""
        if not self._access_folding.exists():
            return
        _append(self._access_log, self._access_folding.read_bytes())
        self._access_folding.unlink()

    # ---- writes -----------------------------------------------------------------

    def add(self, text: str, **fields: Any) -> MemoryUnit:
        """Add one unit; see ``build_unit`` for the fields."""
        unit = build_unit(text, **fields)
        self._write_new([unit], op="add")
        return unit

    def import_records(
        self,
        records: Iterable[tuple[int, Any]],
        *,
        defaults: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[MemoryUnit]:
        """Import (line number, JSON object) pairs, all in one commit or none.

        Every record is validated before anything is written; the first bad
        one raises ``UsageError`` naming its line.
        """
        allowed = {"text", "time", "kind", "tags", "meta", "sources", "cube", "user", "importance", "ttl", "pinned"}
        defaults = defaults or {}
        now = utcnow()
        units: list[MemoryUnit] = []
        for lineno, rec in records:
            if not isinstance(rec, dict):
                raise UsageError(f"line {lineno}: expected a JSON object")
            unknown = set(rec) - allowed
            if unknown:
                raise UsageError(f"line {lineno}: unknown field {sorted(unknown)[0]!r}")
            if "text" not in rec:
                raise UsageError(f"line {lineno}: missing \"text\"")
            args = {**defaults, **{k: v for k, v in rec.items() if k != "text" and v is not None}}
            try:
                units.append(build_unit(rec["text"], now=now, **args))
            except UsageError as exc:
                raise UsageError(f"line {lineno}: {exc}") from None
        if not units:
            raise UsageError("nothing to import: the input has no records")
        self._write_new(units, op="import", progress=progress)
        return units

    def _write_new(
        self, units: list[MemoryUnit], *, op: str, progress: Callable[[int, int], None] | None = None
    ) -> None:
        cubes = sorted({u.cube for u in units})
        users = sorted({u.user for u in units})
        # Embed before taking the lock: the slow part should not block other writers.
        self.embed(units, progress)
        with self.transaction(op, cube=",".join(cubes), user=",".join(users)) as txn:
            self.save(txn, units, new=True)
            txn.ids = [u.id for u in units]

    def edit(self, uid: str, changes: dict[str, Any], *, expect_version: int | None = None) -> MemoryUnit | None:
        """Change a unit's fields; a new version of it. Returns it, or None when nothing changed.

        ``changes`` holds validated values for any of text, kind, tags, meta,
        importance, time, expires_at, valid_from, valid_to. A changed text is
        re-embedded. With ``expect_version``, refuses when someone else
        changed the unit meanwhile (an editor session).
        """
        editable = {"text", "kind", "tags", "meta", "importance", "time", "expires_at", "valid_from", "valid_to"}
        unknown = sorted(set(changes) - editable)
        if unknown:
            raise UsageError(f"{unknown[0]!r} cannot be edited")
        current = self.get(uid)
        changes = {k: v for k, v in changes.items() if getattr(current, k) != v}
        if not changes:
            return None
        vector = None
        if "text" in changes:  # embed before the lock
            vector = self.embedder.embed([changes["text"]])[0].tolist()
        with self.transaction("edit", cube=current.cube) as txn:
            unit = self._units_by_id([current.id])[0]  # as of now, under the lock
            if expect_version is not None and unit.version != expect_version:
                raise StoreError(f"{unit.id} changed while you edited it (now version {unit.version}); "
                                 "nothing was saved, edit it again")
            for key, value in changes.items():
                setattr(unit, key, value)
            if vector is not None:
                unit.vector, unit.model = vector, self.embedder.model_id
            unit.version += 1
            unit.updated_at = utcnow()
            self.save(txn, [unit])
            txn.ids = [unit.id]
            txn.details.append(f"{unit.id}: version {unit.version}, changed {', '.join(sorted(changes))}")
        return unit

    def forget(self, ids: list[str]) -> list[MemoryUnit]:
        """Soft-delete units (status ``deleted``): gone from recall, kept in history.

        Returns the units forgotten now (those already forgotten are left as they are).
        """
        found = {u.id: u for u in (self.get(uid) for uid in ids)}  # every id must exist, before anything changes
        wanted = list(found)
        with self.transaction("forget", cube=",".join(sorted({u.cube for u in found.values()}))) as txn:
            units = [u for u in self._units_by_id(wanted) if u.status != "deleted"]
            now = utcnow()
            for unit in units:
                unit.status = "deleted"
                unit.version += 1
                unit.updated_at = now
            self.save(txn, units)
            txn.ids = [u.id for u in units]
        return units

    def pin(self, ids: list[str], pinned: bool = True) -> list[MemoryUnit]:
        """Pin units (``pinned=False``: unpin them), in one commit (op ``pin`` or ``unpin``).

        Pinned units are always in context: they make up their cube's
        activation memory. Pinning is placement, not content: like access
        counts, it changes neither ``version`` nor ``updated_at``. Every id
        (or unique prefix) must name a unit before anything changes, and only
        active units can be pinned. Units already in that state are left as
        they are; returns the units changed, and when there are none makes no
        commit and returns [].
        """
        if not isinstance(pinned, bool):
            raise UsageError(f"bad pinned {pinned!r}: use true or false")
        if not ids:
            raise UsageError(f"give the ids of the memories to {'pin' if pinned else 'unpin'}")
        found = {u.id: u for u in (self.get(uid) for uid in ids)}  # every id must exist, before anything changes
        if pinned:
            for unit in found.values():
                if unit.status != "active":
                    raise UsageError(f"{unit.id} is {unit.status}; only active memories can be pinned")
        if all(u.pinned == pinned for u in found.values()):
            return []
        op = "pin" if pinned else "unpin"
        with self.transaction(op, cube=",".join(sorted({u.cube for u in found.values()}))) as txn:
            units = [u for u in self._units_by_id(list(found)) if u.pinned != pinned]  # as of now, under the lock
            for unit in units:
                unit.pinned = pinned
            self.save(txn, units)
            txn.ids = [u.id for u in units]
        return units

    def rollback(self, rev: str) -> dict[str, Any]:
        """A new commit that puts every unit back as it was at ``rev``; history is kept."""
        from .sync import attach_vectors

        target = self.repo.resolve(rev)

        def plan(head: str) -> tuple[list[MemoryUnit], list[str]]:
            changes = self.repo.changed(head, target, files.UNITS_DIR)
            restore = [path for status, path in changes if status != "D"]
            remove = [uid for status, path in changes if status == "D" and (uid := files.id_of(path))]
            units = files.read_at(self.repo, target, restore)
            attach_vectors(self, units)  # old texts are embedded again: before the lock when we can
            return units, remove

        self._ensure_current()
        planned_at = self.repo.head() or ""
        units, remove = plan(planned_at)
        with self.transaction("rollback", cube="*") as txn:
            head = self.repo.head() or ""
            if head != planned_at:  # another write landed meanwhile
                units, remove = plan(head)
            self._refuse_hand_edited(remove)  # save() checks the others
            self.save(txn, units)
            self.drop(txn, remove)
            txn.ids = [u.id for u in units] + remove
            txn.summary = f"to {target[:10]}, {len(txn.ids)} units changed"
            txn.trailers["Memos-Target"] = target
        return {"target": target, "commit": txn.commit, "restored": [u.id for u in units], "removed": remove}

    def set_config(self, key: str, value: Any = None, *, unset: bool = False) -> dict[str, Any]:
        """Set one setting of memos.toml (``unset``: back to its default) in one commit (op ``config``).

        ``key`` is dotted (``recall.k``, ``consolidate.duplicates.similarity``).
        The whole resulting config is checked before anything is written: an
        unknown key, a bad value or a read-only setting raises ``UsageError``
        and changes nothing. A value equal to the current one (an unset of a
        setting at its default) makes no commit. Returns the key, the ``old``
        and new ``value``, its ``default``, whether it ``changed`` and the
        ``commit``.
        """

        def change(config: StoreConfig) -> StoreConfig:
            return config.without(key) if unset else config.with_value(key, value)

        def unchanged(old: StoreConfig, new: StoreConfig) -> bool:
            if unset:  # back to the default: nothing to do when the file would stay as it is
                return new.to_toml() == old.to_toml()
            return new.get(key).value == old.get(key).value

        current = self.config  # a missing store or a too-new one fails here, before any work
        new = change(current)  # bad keys and values fail here, before the lock
        result = {"key": key, "old": current.get(key).value, "value": new.get(key).value,
                  "default": new.get(key).default, "changed": False, "commit": None}
        if unchanged(current, new):
            return result
        try:
            with self.transaction("config", cube="*") as txn:
                self._config = None  # memos.toml as of now, under the lock
                current = self.config
                new = change(current)
                result.update(old=current.get(key).value, value=new.get(key).value)
                if not unchanged(current, new):
                    self._note_paths(txn, [CONFIG_NAME])
                    tmp = self.root / files.temp_path(CONFIG_NAME)
                    tmp.write_text(new.to_toml(), encoding="utf-8")
                    os.replace(tmp, self.config_path)
                    shown = toml_literal(result["value"])
                    txn.summary = f"unset {key} (default {shown})" if unset else f"set {key} = {shown}"
                    txn.details.append(f"{key}: {toml_literal(result['old'])} -> {shown}")
                    txn.trailers["Memos-Setting"] = key
        finally:
            self._config = None  # read again when next needed (a failed write has put the file back)
        result.update(changed=txn.commit is not None and CONFIG_NAME in txn.paths, commit=txn.commit)
        return result

    def check_dim(self) -> None:
        """Vectors of another width than the table's cannot be stored or searched."""
        if self.table.exists() and self.table.dim != self.embedder.dim:  # dim is None without a table
            raise StoreError(
                f"the store's vectors have {self.table.dim} dimensions but the embedding model "
                f"{self.embedder.model_id} makes {self.embedder.dim}; set [embedding] model in "
                f"{self.config_path} back to the model the store was built with, or rebuild the "
                "search table with `memos check --repair`"
            )

    def embed(self, units: list[MemoryUnit], progress: Callable[[int, int], None] | None = None) -> None:
        """Give these units vectors from the store's embedding model."""
        if not units:
            return
        embedder = self.embedder
        total = len(units)
        done = 0
        for chunk in _chunks(units, EMBED_BATCH):
            vectors = embedder.embed([u.text for u in chunk])
            for unit, vec in zip(chunk, vectors, strict=True):
                unit.vector = vec.tolist()
                unit.model = embedder.model_id
            done += len(chunk)
            if progress:
                progress(done, total)

    def upkeep(self, *, from_run: bool = False, fold: bool = True) -> None:
        """After a write, outside the store's lock: keep the table quick to search and to write to.

        Merges fragments (``UnitTable.merge_plan``) and folds new rows into the full-text and vector
        indexes. Under the lock, each cost a write 50 ms (a merge at 10k units) to several seconds (a
        fold at 100k), and every other writer waited. Now the merged files are written with no lock
        and committed under it (10 ms), and an index is committed by Lance alone, which keeps it
        consistent with the writes committed meanwhile. One upkeep at a time per store
        (``UnitTable.upkeep_lock``; a writer that finds one at work leaves it); it changes no row, so
        it needs no journal, and a kill leaves at worst files no version names, which
        ``memos compact`` removes. Best effort: the write is done whatever happens here. Left while a
        consolidate run is under way, unless the run itself asks (``from_run``); ``fold``: the indexes
        too (a run's slices merge fragments only, and leave the indexes to the run's end).
        """
        table = self.table
        if not table.exists() or (not from_run and self._run_going()):
            return
        with table.exclusive(None) as held:
            if held:
                self._upkeep(table, fold)

    @property
    def run_lock_path(self) -> Path:
        """Held by a ``memos consolidate`` run (``scheduler.run_lock``)."""
        return self.state_dir / RUN_LOCK

    def _run_going(self) -> bool:
        """Whether a consolidate run is under way: its slices change many rows, and its end compacts the
        table, so a writer's upkeep meanwhile would only take its CPU (and fold rows twice)."""
        try:
            fd = os.open(self.run_lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # and the probe's lock with it
        return False

    def _upkeep(self, table: UnitTable, fold: bool) -> None:
        from .table import UPKEEP_LOCK_WAIT

        def commit(results: list[Any]) -> bool:
            if not table.commit_rewrite(results):
                return False
            table.cleanup()  # one table version on disk, as after any write
            return True

        try:
            for _ in range(8):  # a merge can fill the next level; 16^8 rows is far away
                plan = table.merge_plan()
                if plan is None:
                    break
                results = table.rewrite(plan)
                if not self._with_lock(UPKEEP_LOCK_WAIT, lambda r=results: commit(r)):
                    table.discard(results)  # a no-op when commit_rewrite removed them already
                    break
            if fold and table.fold_indexes():
                self._with_lock(UPKEEP_LOCK_WAIT, table.cleanup)
        except (OSError, ValueError, RuntimeError) as exc:  # Lance's errors; the next write's upkeep retries
            if "not found" not in str(exc).lower():  # not a file a writer's cleanup took meanwhile
                self.notices.append(f"the search table's upkeep was left for the next write ({_one_line(exc)})")

    def _with_lock(self, timeout: float, step: Callable[[], Any]) -> Any:
        """``step()`` under the store's lock, waiting at most ``timeout``; False when it was busy."""
        lock = self._lock_for(timeout)
        try:
            lock.acquire()
        except LockedError:
            return False
        try:
            self._recover_locked()
            return step()
        finally:
            lock.release()

    def compact(self, *, prune: bool = True) -> dict[str, int]:
        """Merge table fragments, refresh the indexes, repack git.

        Makes a commit only when pending access counts were folded in: the
        table is not in git, so compacting it changes no history. The merged
        files are written before the lock is taken and committed under it,
        and the indexes are refreshed after it, as in ``upkeep`` (whose lock
        this holds throughout). With ``prune`` (``memos compact``) unreachable
        git objects are deleted now, under the lock; without it (the
        scheduler) git repacks after the lock is released and keeps recent
        loose objects, as ``git gc`` does, which is safe beside other writers'
        commits and keeps them from waiting.
        """
        before = self.sizes()
        table = self.table
        with table.exclusive(self._lock_for().timeout):
            fragments = table.fragments()
            plan = table.compaction_plan()
            results = table.rewrite(plan) if plan is not None else []
            with self.transaction("compact", cube="*") as txn:
                txn.skip_upkeep = True  # done here, with the upkeep lock held
                table.commit_rewrite(results)  # not when a write changed those rows since: left to the next
                txn.summary = f"{table.count()} units, {fragments} table fragments -> {table.fragments()}"
                if prune:
                    txn.after_commit.append(self.repo.gc)
            table.fold_indexes(force=True)
            # Files no version names (a write or upkeep cut off) go too: they may hold text.
            self._with_lock(self._lock_for().timeout, lambda: table.cleanup(unverified=True))
        if not prune:
            self.repo.gc(prune=False)
        after = self.sizes()
        return {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}

    # ---- reads --------------------------------------------------------------------

    def _units_by_id(self, ids: list[str]) -> list[MemoryUnit]:
        """These units from the table (vectors included), in the order given."""
        found: dict[str, MemoryUnit] = {}
        for chunk in _chunks(ids, 500):
            found.update({u.id: u for u in self.table.units("id IN (" + ",".join(_q(i) for i in chunk) + ")")})
        return [found[i] for i in ids if i in found]

    def get_many(self, ids: list[str]) -> list[MemoryUnit]:
        """The units with these full ids that exist, in the order given (no prefixes, no errors)."""
        self._ensure_current()
        return self._with_pending(self._units_by_id(ids)) if ids and self.table.exists() else []

    def get(self, uid: str) -> MemoryUnit:
        """A unit by id or by a unique prefix of at least 4 characters."""
        uid = uid.strip().lower()
        if len(uid) < 4 or not uid.isalnum():
            raise NotFoundError(f"no memory with id {uid!r}")
        self._ensure_current()
        found = self.table.units(f"starts_with(id, {_q(uid)})", limit=2)
        exact = [u for u in found if u.id == uid]
        if exact:
            found = exact
        if not found:
            raise NotFoundError(f"no memory with id {uid!r}")
        if len(found) > 1:
            raise UsageError(f"id prefix {uid!r} is ambiguous; give more characters")
        return self._with_pending(found)[0]

    def list(self, filters: Filters | None = None, limit: int = 50) -> list[MemoryUnit]:
        from .retrieval import Filters
        from .table import from_row, row_columns

        where = (filters or Filters()).sql()
        self._ensure_current()
        columns = self.table.present(row_columns())  # a table not yet rebuilt (a read-only store) may lack some
        rows = self.table.select(where, columns=columns, limit=limit or None, newest_first=True).to_pylist()
        return self._with_pending([from_row(r) for r in rows])

    def _with_pending(self, units: list[MemoryUnit]) -> list[MemoryUnit]:
        pending = self.pending_access() if units else {}
        if pending:
            from .units import parse_time

            for u in units:
                if u.id in pending:
                    n, last = pending[u.id]
                    u.access_count += n
                    u.last_accessed = parse_time(last)
        return units

    def recall(self, query: str, k: int = 10, filters: Filters | None = None, *, context: bool = True) -> list[Hit]:
        return self.recall_many([query], k, filters, context=context)[0]

    def recall_many(self, queries: list[str], k: int | list[int] = 10, filters: Filters | None = None, *,
                    context: bool = True) -> list[list[Hit]]:
        """Hybrid recall for several queries; counts the accesses of the hits.

        With ``context``, conversation turns come with their neighbouring turns
        (``retrieval.attach_context``).
        """
        from .retrieval import Filters, attach_context, hybrid_search

        ks = k if isinstance(k, list) else [k] * len(queries)
        for kk in ks:
            if not isinstance(kk, int) or isinstance(kk, bool) or not 1 <= kk <= 1000:
                raise UsageError(f"bad k {kk!r}: use a whole number from 1 to 1000")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise UsageError("the query is empty")
        self._ensure_current()
        if not self.table.exists():
            return [[] for _ in queries]
        self.check_dim()
        where = (filters or Filters()).sql(now=utcnow())
        embed = self.embedder.embed_query
        results = [
            self.table.read(lambda ds, q=q, kk=kk: hybrid_search(ds, q, embed, kk, where))
            for q, kk in zip(queries, ks, strict=True)
        ]
        if context:
            for hits in results:
                self.table.read(lambda ds, hits=hits: attach_context(ds, hits, where))
        self.log_access(h.unit.id for hits in results for h in hits)
        return results

    def sizes(self) -> dict[str, int]:
        return {
            "tables_bytes": _du(self.root / TABLES_DIR),
            "git_bytes": _du(self.root / ".git"),
        }

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {"kind": {}, "status": {}, "cube": {}}
        self._ensure_current()
        if self.table.exists():
            cols = self.table.select(None, columns=["kind", "status", "cube"]).to_pydict()
            for name, values in cols.items():
                for value in values:
                    counts[name][value] = counts[name].get(value, 0) + 1
        pinned = self.table.count("pinned = true AND status = 'active'") if self.table.present(["pinned"]) else 0
        commits = int(self.repo.git.rev_list("--count", "HEAD")) if self.repo.head() else 0
        return {
            "store": str(self.root),
            "units": sum(counts["status"].values()),
            "by_kind": dict(sorted(counts["kind"].items())),
            "by_status": dict(sorted(counts["status"].items())),
            "by_cube": dict(sorted(counts["cube"].items())),
            "pinned": pinned,  # active units
            "commits": commits,
            "fragments": self.table.fragments(),
            "pending_accesses": sum(n for n, _ in self.pending_access().values()),
            "embedding_model": self.config.embedding_model,
            "schema_version": self.config.schema_version,
            **self.sizes(),
        }


def _q(value: str) -> str:
    from .table import sql_str

    return sql_str(value)


def _append(path: Path, data: bytes) -> None:
    """One O_APPEND write: lines from concurrent processes do not interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total



def _write_gitignore(root: Path) -> None:
    files.write_private(root / ".gitignore", (
        "# Derived data, rebuilt from the unit files: the LanceDB table and its indexes.\n"
        f"/{TABLES_DIR}/\n"
    ).encode())
