"""Purge: remove units from the store, its search table and all of its history.

For what must not stay anywhere (a leaked secret, a person's request to be
forgotten). Under the store's lock, for each unit:

1. its file is removed and the purge is committed;
2. the search table is rebuilt from the remaining unit files into new files
   and the old table directory deleted, so no data file, index or old
   version holds the text or its embedding;
3. git history is rewritten with ``git filter-repo`` to drop the file from
   every commit (commits are kept, as empty ones where that was all they
   did, so ``memos log`` still reads the same); in a store upgraded from
   schema 1, the old LanceDB files in history, which held the text too, are
   dropped as well;
4. every reflog is expired and ``git gc --prune=now`` deletes the
   unreachable objects, loose and packed.

Limits: clones, remotes and backups made before the purge still hold the
text; push the rewritten history with ``--force`` and purge (or re-clone)
them. Commit ids change from the first rewritten commit on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import files
from .errors import NotFoundError, StoreError, UsageError
from .units import is_unit_id

if TYPE_CHECKING:
    from .store import MemoryStore


@dataclass
class PurgeReport:
    ids: list[str]
    in_store: list[str]  # of those, the ones that were in the store (the rest only in history)
    commits_rewritten: int = 0
    blobs_removed: int = 0
    table_rows: int = 0  # rows of the rebuilt table
    caches: list[str] = field(default_factory=list)  # activation memories removed with the units
    head: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "purged": self.ids,
            "in_store": self.in_store,
            "commits_rewritten": self.commits_rewritten,
            "blobs_removed": self.blobs_removed,
            "table_rows": self.table_rows,
            "caches": self.caches,
            "head": self.head,
            "notes": self.notes,
        }


def _resolve(store: MemoryStore, uid: str, in_history: bool) -> tuple[str, bool]:
    """(full id, whether it is in the store now)."""
    try:
        return store.get(uid).id, True
    except NotFoundError:
        pass
    uid = uid.strip().lower()
    if is_unit_id(uid) and store.repo.log(1, paths=[files.unit_path(uid)]):
        if not in_history:
            raise NotFoundError(
                f"{uid} is not in the store, only in its history; `memos purge --in-history {uid}` removes it there"
            )
        return uid, False
    raise NotFoundError(f"no memory with id {uid!r} in the store or its history")


def purge(store: MemoryStore, ids: list[str], *, in_history: bool = False) -> PurgeReport:
    from .activation import drop_for_units
    from .sync import rebuild

    if not ids:
        raise UsageError("give the ids of the memories to purge")
    resolved = dict(_resolve(store, uid, in_history) for uid in ids)
    report = PurgeReport(ids=list(resolved), in_store=[u for u, here in resolved.items() if here])
    paths = [files.unit_path(u) for u in resolved]
    with store.transaction("purge", cube="*") as txn:
        txn.allow_empty = True
        txn.ids = list(resolved)
        store.drop(txn, report.in_store)
        # A new table from the remaining files: no old data file, index or version survives.
        head = store.repo.head() or "HEAD"
        remaining = [p for p in store.repo.files(head, files.UNITS_DIR) if p not in set(paths)]
        units = files.read_at(store.repo, head, remaining)
        rebuild(store, units)
        report.table_rows = len(units)
        # Activation memories built from these units hold their text (and its KV state).
        report.caches = [a.id for a in drop_for_units(store, set(resolved))]
        txn.summary = f"{len(resolved)} unit{'s' if len(resolved) != 1 else ''}, removed from all history"
        txn.after_commit.append(lambda: _rewrite_history(store, paths, report))
    report.head = store.repo.head() or ""
    return report


def _rewrite_history(store: MemoryStore, paths: list[str], report: PurgeReport) -> None:
    repo = store.repo
    git_dir = repo.git_dir
    drop = list(paths)
    # Schema 1 kept the LanceDB table (text included) in git.
    if repo.run(["log", "--all", "--format=%H", "-n1", "--", "tables"]).strip():
        drop.append("tables/")
        report.notes.append("dropped the schema-1 LanceDB files from history, as they held the text too")
    touched = repo.run(["log", "--all", "--format=%H", "--", *drop]).split()
    blobs = {line.split()[3] for line in repo.run(["log", "--all", "--format=", "--raw", "--no-abbrev", "--", *drop])
             .splitlines() if line.startswith(":")}
    blobs.discard("0" * 40)
    report.commits_rewritten = len(set(touched))
    report.blobs_removed = len(blobs)
    args = [sys.executable, "-m", "git_filter_repo", "--quiet", "--force", "--partial", "--invert-paths",
            "--prune-empty", "never", "--prune-degenerate", "never", "--replace-refs", "delete-no-add"]
    for path in drop:
        args += ["--path", path]
    proc = subprocess.run(args, cwd=store.root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StoreError(f"git filter-repo failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(git_dir / "filter-repo", ignore_errors=True)  # its maps of old commit ids
    for name in ("ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD"):
        (git_dir / name).unlink(missing_ok=True)
    repo.run(["reset", "-q"])  # the index, to the rewritten HEAD (same content)
    repo.run(["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"])
    repo.run(["gc", "-q", "--prune=now"])
    store.table.mark(repo.head())
