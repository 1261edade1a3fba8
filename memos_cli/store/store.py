"""``MemoryStore``: one memory directory, a git repository of unit files.

The memory is one JSON file per unit (``files``), versioned by git; the
LanceDB table that searches it is derived data outside git (``store.follow``).

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
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from memos_cli.errors import MemosError, StoreError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import default_user
from memos_cli.store import layout
from memos_cli.store.access import AccessCounts
from memos_cli.store.commit import Transaction
from memos_cli.store.config import CONFIG_NAME, StoreConfig
from memos_cli.store.reads import Reads
from memos_cli.store.transaction import Transactions
from memos_cli.store.upkeep import TableUpkeep
from memos_cli.store.writes import Writes

if TYPE_CHECKING:
    from memos_cli.models.embedder import Embedder
    from memos_cli.plaintext.table import UnitTable
    from memos_cli.store.repo import StoreRepo


__all__ = ["MemoryStore", "Transaction"]


class MemoryStore(Transactions, AccessCounts, Writes, TableUpkeep, Reads):
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
            from memos_cli.store.repo import StoreRepo

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
        from memos_cli.store.repo import StoreRepo

        created_root = not self.root.exists()
        try:
            # Private whatever the umask (memory is personal): the root 0700, so no one else
            # reaches anything in it, and the files memos writes 0600 (see files.FILE_MODE).
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, files.DIR_MODE)
            repo = StoreRepo.init(self.root)
            cfg = StoreConfig()
            files.write_private(self.config_path, cfg.to_toml().encode())
            layout.write_gitignore(self.root)
            (self.root / layout.TABLES_DIR).mkdir(mode=files.DIR_MODE, exist_ok=True)
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
            from memos_cli.plaintext.table import UnitTable

            self.config  # noqa: B018 - refuses a missing or too-new store first
            self._table = UnitTable(self.root / layout.TABLES_DIR)
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
        from memos_cli.models.embedder import Embedder
        from memos_cli.models.registry import resolve_embedding_model

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
