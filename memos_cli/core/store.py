"""``MemoryStore``: one memory directory, a git repository of LanceDB tables.

Writes go through ``transaction()``: take the lock, note the commit the store
is at in a journal, change the tables, commit everything as one git commit,
drop the journal. A write that fails, or a process killed in the middle, leaves
the journal behind; the next command that takes the lock finds it and puts the
work tree back to that commit (``recover``), and says so.

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

from .config import CONFIG_NAME, StoreConfig
from .errors import MemosError, NotFoundError, StoreError, UsageError
from .lock import StoreLock
from .units import MemoryUnit, build_unit, default_user, iso, utcnow

if TYPE_CHECKING:
    from ..models.embedder import Embedder
    from .repo import StoreRepo
    from .retrieval import Filters, Hit
    from .table import UnitTable

TABLES_DIR = "tables"
EMBED_BATCH = 256


@dataclass
class Transaction:
    """What one write did; becomes the commit message."""

    op: str
    cube: str = "default"
    user: str = ""
    ids: list[str] = field(default_factory=list)
    summary: str = ""  # replaces the "N units" part of the first line
    folded_accesses: int = 0
    after_commit: list[Callable[[], object]] = field(default_factory=list)  # run under the lock

    def message(self) -> str:
        n = len(self.ids)
        what = self.summary or f"{n} unit{'s' if n != 1 else ''}"
        head = f"{self.op}: {what} (cube {self.cube}, user {self.user})"
        body = []
        if self.ids:
            shown = self.ids if n <= 20 else self.ids[:10] + ["..."] + self.ids[-5:]
            body.append("ids: " + " ".join(shown))
        if self.folded_accesses:
            body.append(f"access counts folded in for {self.folded_accesses} units")
        trailers = [f"Memos-Op: {self.op}", f"Memos-Units: {n}", f"Memos-Cube: {self.cube}", f"Memos-User: {self.user}"]
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
            self.root.mkdir(parents=True, exist_ok=True)
            repo = StoreRepo.init(self.root)
            cfg = StoreConfig()
            self.config_path.write_text(cfg.to_toml(), encoding="utf-8")
            (self.root / ".gitattributes").write_text(
                "# LanceDB files are binary; git stores them whole and packs them with deltas.\n"
                f"{TABLES_DIR}/** binary\n",
                encoding="utf-8",
            )
            (self.root / TABLES_DIR).mkdir(exist_ok=True)
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

    def recover(self) -> bool:
        """If a write was cut off, put the store back to its last commit.

        Takes the lock without waiting; when a writer is busy, leaves it be.
        """
        if not self.exists() or not self._journal.exists():
            return False
        lock = self._lock_for(0)
        if not lock.acquire(blocking=False):
            return False
        try:
            return self._recover_locked()
        finally:
            lock.release()

    def _recover_locked(self) -> bool:
        if not self._journal.exists():
            return False
        try:
            info = json.loads(self._journal.read_text(encoding="utf-8") or "{}")
        except ValueError:
            info = {}
        head = self.repo.head() or ""
        committed = bool(info.get("head")) and info["head"] != head
        self.repo.restore()
        if committed:  # its folded access counts are in that commit
            self._access_folding.unlink(missing_ok=True)
        else:
            self._unfold_access_log()
        self._journal.unlink(missing_ok=True)
        self._table = None
        what = f"an interrupted {info.get('op', 'write')} (pid {info.get('pid', '?')}, started {info.get('started', '?')})"
        if committed:
            self.notices.append(f"{what} had committed before it stopped; the store is at {head[:10]}")
        else:
            self.notices.append(
                f"recovered from {what}: its changes were undone; the store is back at its last commit {head[:10]}"
            )
        return True

    @contextmanager
    def transaction(self, op: str, *, cube: str = "default", user: str | None = None) -> Iterator[Transaction]:
        """Everything written inside lands as one commit, or not at all."""
        if not self.exists():
            self.init()
        self._check_writable()
        lock = self._lock_for()
        lock.acquire()
        try:
            self._recover_locked()
            txn = Transaction(op=op, cube=cube, user=user or default_user())
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._journal.write_text(
                json.dumps({"op": op, "head": self.repo.head(), "pid": os.getpid(), "started": iso(utcnow())}),
                encoding="utf-8",
            )
            committed = False
            try:
                txn.folded_accesses = self._fold_access_log()
                yield txn
                if self._table is not None and self._table.exists():
                    self._table.maintain()
                self.repo.commit_all(txn.message(), txn.user)
                committed = True
                self._access_folding.unlink(missing_ok=True)  # those counts are in the commit now
                for step in txn.after_commit:
                    step()
            except BaseException:
                if not committed:
                    self.repo.restore()
                    self._unfold_access_log()
                    self._table = None
                raise
            finally:
                self._journal.unlink(missing_ok=True)
        finally:
            lock.release()

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
            self.state_dir.mkdir(exist_ok=True)
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

    def _fold_access_log(self) -> int:
        """Move pending access counts into the table (inside a transaction)."""
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

        units = []
        for chunk in _chunks(list(counts), 500):
            units += self.table.units("id IN (" + ",".join(_q(i) for i in chunk) + ")")
        for u in units:
            n, last = counts[u.id]
            u.access_count += n
            u.last_accessed = parse_time(last)
        if units:
            self.table.upsert(units)
        return len(units)

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
        allowed = {"text", "time", "kind", "tags", "meta", "sources", "cube", "user", "importance", "ttl"}
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
        self._embed(units, progress)
        with self.transaction(op, cube=",".join(cubes), user=",".join(users)) as txn:
            self._check_dim()
            self.table.add(units)
            self.table.ensure_fts_index()
            txn.ids = [u.id for u in units]

    def _check_dim(self) -> None:
        """Vectors of another width than the table's cannot be stored or searched."""
        if self.table.exists() and self.table.dim != self.embedder.dim:  # dim is None without a table
            raise StoreError(
                f"the store's vectors have {self.table.dim} dimensions but the embedding model "
                f"{self.embedder.model_id} makes {self.embedder.dim}; set [embedding] model in "
                f"{self.config_path} back to the model the store was built with"
            )

    def _embed(self, units: list[MemoryUnit], progress: Callable[[int, int], None] | None) -> None:
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

    def compact(self) -> dict[str, int]:
        """Merge table fragments, refresh the full-text index, repack git."""
        before = self.sizes()
        with self.transaction("compact", cube="*") as txn:
            fragments = self.table.fragments()
            if self.table.exists():
                self.table.compact()
                self.table.ensure_fts_index(force=True)
            txn.summary = f"{self.table.count()} units, {fragments} table fragments -> {self.table.fragments()}"
            txn.after_commit.append(self.repo.gc)
        after = self.sizes()
        return {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}

    # ---- reads --------------------------------------------------------------------

    def get(self, uid: str) -> MemoryUnit:
        """A unit by id or by a unique prefix of at least 4 characters."""
        uid = uid.strip().lower()
        if len(uid) < 4 or not uid.isalnum():
            raise NotFoundError(f"no memory with id {uid!r}")
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
        rows = self.table.select(where, columns=row_columns(), limit=limit or None, newest_first=True).to_pylist()
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

    def recall(self, query: str, k: int = 10, filters: Filters | None = None) -> list[Hit]:
        return self.recall_many([query], k, filters)[0]

    def recall_many(self, queries: list[str], k: int | list[int] = 10, filters: Filters | None = None) -> list[list[Hit]]:
        """Hybrid recall for several queries; counts the accesses."""
        from .retrieval import Filters, hybrid_search

        ks = k if isinstance(k, list) else [k] * len(queries)
        for kk in ks:
            if not isinstance(kk, int) or isinstance(kk, bool) or not 1 <= kk <= 1000:
                raise UsageError(f"bad k {kk!r}: use a whole number from 1 to 1000")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise UsageError("the query is empty")
        if not self.table.exists():
            return [[] for _ in queries]
        self._check_dim()
        where = (filters or Filters()).sql(now=utcnow())
        embed = self.embedder.embed_query
        results = [
            self.table.read(lambda ds, q=q, kk=kk: hybrid_search(ds, q, embed, kk, where))
            for q, kk in zip(queries, ks, strict=True)
        ]
        self.log_access(h.unit.id for hits in results for h in hits)
        return results

    def history(self, n: int = 20) -> list[Any]:
        return self.repo.history(n)

    def sizes(self) -> dict[str, int]:
        return {
            "tables_bytes": _du(self.root / TABLES_DIR),
            "git_bytes": _du(self.root / ".git"),
        }

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {"kind": {}, "status": {}, "cube": {}}
        if self.table.exists():
            cols = self.table.select(None, columns=["kind", "status", "cube"]).to_pydict()
            for name, values in cols.items():
                for value in values:
                    counts[name][value] = counts[name].get(value, 0) + 1
        commits = int(self.repo.git.rev_list("--count", "HEAD")) if self.repo.head() else 0
        return {
            "store": str(self.root),
            "units": sum(counts["status"].values()),
            "by_kind": dict(sorted(counts["kind"].items())),
            "by_status": dict(sorted(counts["status"].items())),
            "by_cube": dict(sorted(counts["cube"].items())),
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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total

