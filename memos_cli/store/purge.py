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

Parametric memory learned from the units goes with them: every record
(``params/NAME.json``) whose sources, or whose blob's metadata, name a purged
unit is removed with its blob in the purge's commit (with any other record
sharing that blob), and in step 3 every version of such a record (by git
object id: the versions of that name learned from other units stay) and
every such blob file are dropped from history.

Before step 1 the purge also removes what memos keeps beside git that may
hold the text: the activation memories built from the units (``tables/kv``)
and the ``memos chat`` line history (``.git/memos/chat_history``, cleared as a
whole: what was typed need not contain a unit's text as it is stored).

A purge cannot be undone halfway: once it has started (its journal,
``.git/memos/purge.json``, written under the lock before anything else, with
the ids and the commit it started from), it is carried through to the end.
A purge killed at any point leaves the journal, and the next command, on
taking the lock, finishes it (``resume``): it removes the files and commits
if that commit was not made, rebuilds the table, and rewrites and prunes
history again (each step can be run twice); only then is the journal
dropped. The store's own journal stays in place all along, so the next
command always looks.

The purge commit names every id in its ``Memos-Purged`` trailer, so that
``memos sync`` carries the purge to the other side (``portable.sync``): a
remote that still holds the text is refused or, when asked, purged too, and
a purge made elsewhere is applied here. Backups and clones that never sync
still hold the text. Commit ids change from the first rewritten commit on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError, NotFoundError, StoreError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import default_user, is_unit_id, iso, utcnow
from memos_cli.store import killpoint, params

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore


JOURNAL = "purge.json"  # in the store's state directory, .git/memos/
CHAT_HISTORY = "chat_history"  # the line history of `memos chat`, per store
PURGED = "purged"  # changes at every purge: a chat session then does not write its history back
PURGED_TRAILER = "Memos-Purged"  # the purge commit's trailer naming every id purged


def journal_path(store: MemoryStore) -> Path:
    return store.state_dir / JOURNAL


def chat_history_path(store: MemoryStore) -> Path:
    return store.state_dir / CHAT_HISTORY


def purge_mark(store: MemoryStore) -> str:
    """What the last purge left in ``.git/memos/purged`` ("" before any): a chat session notes it
    when it starts and writes its line history only if it is unchanged."""
    try:
        return (store.state_dir / PURGED).read_text(encoding="utf-8")
    except OSError:
        return ""


@dataclass
class PurgeReport:
    ids: list[str]
    in_store: list[str]  # of those, the ones that were in the store (the rest only in history)
    commits_rewritten: int = 0
    blobs_removed: int = 0
    table_rows: int = 0  # rows of the rebuilt table
    caches: list[str] = field(default_factory=list)  # activation memories removed with the units
    params: list[str] = field(default_factory=list)  # parametric memories learned from them, removed from the store
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
            "params": self.params,
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
    if not ids:
        raise UsageError("give the ids of the memories to purge")
    resolved = dict(_resolve(store, uid, in_history) for uid in ids)
    report = PurgeReport(ids=list(resolved), in_store=[u for u, here in resolved.items() if here])
    paths = [files.unit_path(u) for u in resolved]
    journal = False
    try:
        with store.transaction("purge", cube="*") as txn:
            txn.allow_empty = True
            txn.ids = list(resolved)
            txn.summary = _summary(len(resolved))
            txn.trailers[PURGED_TRAILER] = " ".join(resolved)  # every id: a sync reads them (portable.sync)
            # From here on the purge is carried through, by this process or, if it is killed, by the next command.
            _write_journal(store, {"ids": report.ids, "in_store": report.in_store, "head": store.repo.head(),
                                   "user": txn.user, "pid": os.getpid(), "started": iso(utcnow())})
            journal = True
            killpoint.reached("purge.started")
            store.drop(txn, report.in_store)
            report.params = params.drop_for_units(store, set(report.ids), txn)
            _scrub_beside_git(store, report, paths)
            txn.after_commit.append(lambda: _finish(store, paths, report))
    except BaseException:
        # An error or Ctrl-C before the commit: the write was undone and the user told; the purge
        # did not happen and can be run again. After the commit, the journal stays: the next
        # command finishes the rewrite.
        if journal and txn.commit is None:
            journal_path(store).unlink(missing_ok=True)
        raise
    report.head = store.repo.head() or ""
    return report


def resume(store: MemoryStore) -> bool:
    """Finish a purge that was cut off (the caller holds the lock and has undone any write that did
    not commit); True when there was one. Every step is done again: each may be run twice."""
    path = journal_path(store)
    if not path.exists():
        return False
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        ids = [str(u) for u in info["ids"]]
        if not ids or not all(is_unit_id(u) for u in ids):
            raise ValueError("no ids")
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        store.notices.append(f"dropped the unreadable journal of an interrupted purge ({path}); if a purge "
                             "was cut off, run it again: `memos purge --in-history ID` finds units in history too")
        return True
    paths = [files.unit_path(u) for u in ids]
    report = PurgeReport(ids=ids, in_store=[str(u) for u in info.get("in_store", [])])
    report.params, param_paths = params.find_for_units(store, set(ids))
    head = store.repo.head()
    # The store's journal, kept until the end: a kill on the way brings the next command back here.
    files.write_private(store._journal_files, "".join(p + "\n" for p in paths + param_paths).encode())
    files.write_private(store._journal, json.dumps({"op": "purge", "head": head, "pid": os.getpid(),
                                                    "started": iso(utcnow())}).encode())
    # Only the purge's commit, then its rewrite, move HEAD under the lock (a file still in HEAD: a commit
    # made by hand meanwhile, say, and the purge's own not made).
    committed = head != info.get("head") and not any(
        store.repo.probe(["cat-file", "-e", f"HEAD:{p}"]).returncode == 0 for p in paths)
    for uid in ids:
        files.remove(store.root, uid)
    for rel in param_paths:
        (store.root / rel).unlink(missing_ok=True)
    _scrub_beside_git(store, report, paths)
    if not committed:
        from memos_cli.store.commit import Transaction

        txn = Transaction(op="purge", cube="*", user=str(info.get("user") or default_user()), ids=ids,
                          summary=_summary(len(ids)), allow_empty=True, trailers={PURGED_TRAILER: " ".join(ids)})
        killpoint.reached("written")
        store.repo.commit(paths + param_paths, txn.message(), txn.user, allow_empty=True)
        killpoint.reached("committed")
    _finish(store, paths, report)
    store._drop_journal()
    store.notices.append(
        f"finished an interrupted purge of {_units(len(ids))} (pid {info.get('pid', '?')}, started "
        f"{info.get('started', '?')}): removed from the store, its search table and all of history; "
        f"the store is at {(store.repo.head() or '')[:10]}")
    return True


def _summary(n: int) -> str:
    return f"{_units(n)}, removed from all history"


def _units(n: int) -> str:
    return f"{n} unit{'s' if n != 1 else ''}"


def _write_journal(store: MemoryStore, info: dict[str, Any]) -> None:
    """Write the purge's journal whole, or not at all."""
    path = journal_path(store)
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, files.FILE_MODE), "wb") as fh:
        os.fchmod(fh.fileno(), files.FILE_MODE)
        fh.write(json.dumps(info).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _scrub_beside_git(store: MemoryStore, report: PurgeReport, paths: list[str]) -> None:
    """What holds the text outside git: the search table, activation memories, the chat line history."""
    from memos_cli.store.caches import drop_for_units
    from memos_cli.store.follow import rebuild

    # A new table from the remaining files: no old data file, index or version survives.
    head = store.repo.head() or "HEAD"
    gone = set(paths)
    remaining = [p for p in store.repo.files(head, files.UNITS_DIR) if p not in gone]
    units = store.repo.units_at(head, remaining)
    rebuild(store, units)
    report.table_rows = len(units)
    # Activation memories built from these units hold their text (and its KV state).
    report.caches = [a.id for a in drop_for_units(store, set(report.ids))]
    # The chat's line history holds what was typed, which need not match a unit's text as
    # stored (a turn is saved with the answer; a fact may be typed in a question): clear it all.
    chat_history_path(store).unlink(missing_ok=True)
    files.write_private(store.state_dir / PURGED, f"{time.time_ns()} {os.getpid()}\n".encode())
    legacy = _legacy_chat_history()
    if legacy is not None and legacy.exists():
        legacy.unlink(missing_ok=True)
        report.notes.append(f"removed {legacy}, the chat line history that earlier versions of memos kept for all stores")


def _legacy_chat_history() -> Path | None:
    """Where memos once kept one chat line history for all stores (the model cache directory)."""
    from memos_cli.models.registry import cache_dir

    try:
        return cache_dir() / CHAT_HISTORY
    except MemosError:
        return None


def _finish(store: MemoryStore, paths: list[str], report: PurgeReport) -> None:
    """After the purge's commit: rewrite history, prune, and drop the purge's journal."""
    _rewrite_history(store, paths, report)
    journal_path(store).unlink(missing_ok=True)


def _rewrite_history(store: MemoryStore, paths: list[str], report: PurgeReport) -> None:
    repo = store.repo
    drop = list(paths)
    # Schema 1 kept the LanceDB table (text included) in git.
    if repo.run(["log", "--all", "--format=%H", "-n1", "--", "tables"]).strip():
        drop.append("tables/")
        report.notes.append("dropped the schema-1 LanceDB files from history, as they held the text too")
    # Parametric memory learned from the units: its blob files by path, its records' versions by object id.
    learned = params.history_drops(store, set(report.ids))
    drop += learned.paths
    earlier = sorted(set(learned.names) - set(report.params))
    if earlier:
        report.notes.append("dropped from history the earlier versions of parametric memories learned from them: "
                            + " ".join(earlier))
    touched = set(repo.run(["log", "--all", "--format=%H", "--", *drop]).split()) | learned.commits
    blobs = {line.split()[3] for line in repo.run(["log", "--all", "--format=", "--raw", "--no-abbrev", "--", *drop])
             .splitlines() if line.startswith(":")} | learned.objects
    blobs.discard("0" * 40)
    report.commits_rewritten = len(touched)
    report.blobs_removed = len(blobs)
    if touched:  # none when an interrupted purge being finished had rewritten history already
        _filter_repo(store, drop, learned.strip)
    killpoint.reached("purge.rewritten")
    repo.run(["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"])
    repo.gc(prune=True)
    killpoint.reached("purge.pruned")
    store.table.mark(repo.head())


def _filter_repo(store: MemoryStore, drop: list[str], strip: list[str] | None = None) -> None:
    """Drop these paths, and the git blob objects ``strip``, from every commit."""
    repo = store.repo
    git_dir = repo.git_dir
    args = [sys.executable, "-m", "git_filter_repo", "--quiet", "--force", "--partial", "--invert-paths",
            "--prune-empty", "never", "--prune-degenerate", "never", "--replace-refs", "delete-no-add"]
    for path in drop:
        args += ["--path", path]
    strip_file = store.state_dir / "purge-strip.txt"
    if strip:
        files.write_private(strip_file, "".join(obj + "\n" for obj in strip).encode())
        args += ["--strip-blobs-with-ids", str(strip_file)]
    try:
        proc = subprocess.run(args, cwd=store.root, capture_output=True, text=True)
    finally:
        strip_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise StoreError(f"git filter-repo failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(git_dir / "filter-repo", ignore_errors=True)  # its maps of old commit ids
    for name in ("ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD"):
        (git_dir / name).unlink(missing_ok=True)
    repo.run(["reset", "-q"])  # the index, to the rewritten HEAD (same content)
