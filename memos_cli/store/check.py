"""``memos check``: verify a store, and repair what can be repaired.

What is checked, in order:

- git: a first commit exists, the object database is whole (``git fsck
  --connectivity-only``), no write was cut off (a journal left behind), and
  the unit files and ``memos.toml`` have no uncommitted changes;
- unit files: every file under ``units/`` at HEAD is valid JSON, a valid
  unit, and sits at the path of its id;
- the search table: it reflects HEAD, it is readable, and it holds exactly
  the units of the files, field for field;
- embeddings: every row has a vector of the configured model, of the
  model's width, finite and not zero;
- the full-text index exists;
- activation memory: every record's cache file exists and hashes to its
  name, and no cache file is orphaned;
- parametric memory: every record under ``params/`` parses, and its blob
  exists, hashes to its name and holds what the record says
  (``params.verify_blob``); no blob is orphaned. Reported, never repaired:
  they are committed memory (`memos param rm NAME` removes one);
- privacy: no file or directory of the store (``.git`` and the tables
  included) can be read, written or entered by group or others: memos
  makes them 0600 and 0700, and a ``chmod`` or a copy may have opened them.

Repairs: an interrupted write is undone (as any write would do first), and
any problem of the table, its embeddings or its index is fixed by rebuilding
the table from the unit files, re-embedding only what needs it. Problems in
git or in the unit files themselves are reported with what to do, never
"fixed" by discarding anything. Orphaned cache files are removed, and the
records of missing or damaged caches dropped (`memos kv build` makes them
again). Files and directories open to others are made private again
(``chmod go-rwx``).
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError
from memos_cli.plaintext import files
from memos_cli.store import params

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore


@dataclass
class Problem:
    area: str  # git, units, params, table, embeddings, index, kv, privacy
    message: str
    fixable: bool
    fixed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"area": self.area, "message": self.message, "fixable": self.fixable, "fixed": self.fixed}


@dataclass
class CheckReport:
    store: str
    head: str | None = None
    units: int = 0
    params: int = 0  # parametric memories' records read
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    reembed: set[str] = field(default_factory=set)  # units whose vectors must be made anew
    reembed_all: bool = False
    temp_files: list[str] = field(default_factory=list)  # left by a write killed mid-file
    exposed: list[Path] = field(default_factory=list)  # files and directories open to group or others

    @property
    def ok(self) -> bool:
        return all(p.fixed for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "head": self.head, "units": self.units, "params": self.params,
                "rows": self.rows, "problems": [p.to_json() for p in self.problems], "repaired": self.repaired}


def check(store: MemoryStore, repair: bool = False) -> CheckReport:
    report = CheckReport(store=str(store.root))
    if repair:
        with store._lock_for():
            store._recover_locked()  # an interrupted write, undone as the next write would
            report.repaired += store.notices
            store.notices.clear()
            _inspect(store, report)
            for rel in report.temp_files:
                (store.root / rel).unlink(missing_ok=True)
            if report.temp_files:
                report.repaired.append(f"removed {len(report.temp_files)} temporary unit files")
            if report.exposed:
                report.repaired.append(_make_private(report.exposed))
            if any(p.fixable and p.area not in ("git", "kv", "privacy") for p in report.problems):
                _rebuild(store, report)
            if any(p.area == "kv" for p in report.problems):
                from memos_cli.store.caches import repair_locked

                report.repaired += repair_locked(store)
            tried = [p for p in report.problems if p.fixable]
            if tried:  # look again: what is still wrong was not fixed
                again = CheckReport(store=report.store)
                _inspect(store, again)
                remaining = {q.area for q in again.problems if q.fixable}
                for p in tried:
                    p.fixed = p.area not in remaining
                areas = {p.area for p in tried}
                report.problems += [q for q in again.problems if q.fixable and q.area not in areas]
                report.rows = again.rows
    else:
        _inspect(store, report)
    return report


def _rebuild(store: MemoryStore, report: CheckReport) -> None:
    from memos_cli.store.follow import rebuild

    head = store.repo.head() or "HEAD"
    units = []
    for spec, data in store.repo.cat(f"{head}:{p}" for p in store.repo.files(head, files.UNITS_DIR)):
        try:
            units.append(files.loads(data or b"", spec.split(":", 1)[1]))
        except MemosError:
            continue  # reported as a units problem; nothing to index
    if report.reembed_all:
        with store.table.exclusive():
            store.table.drop()  # nothing in it to reuse
    elif report.reembed:
        store.table.delete(sorted(report.reembed))  # so the rebuild embeds them again
    rebuild(store, units)
    store.table.mark(store.repo.head())
    report.repaired.append(f"rebuilt the search table from {len(units)} unit files")


def _exposed(root: Path) -> list[Path]:
    """The store's files and directories that group or others may use (links are not followed).

    One stat per file: 101k files took 2.4 to 6 s on a 2-core machine busy with other work.
    """
    found = [root] if os.stat(root).st_mode & 0o077 else []  # the root may be a link to the store
    pending = [str(root)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except FileNotFoundError:  # removed by a writer meanwhile
            continue
        with entries:
            for entry in entries:
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(mode):
                    pending.append(entry.path)
                if mode & 0o077 and not stat.S_ISLNK(mode):
                    found.append(Path(entry.path))
    return found


def _make_private(paths: list[Path]) -> str:
    """``chmod go-rwx`` each of these paths."""
    done = 0
    for path in paths:
        try:
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o077)  # links were left out
            done += 1
        except FileNotFoundError:  # gone meanwhile
            continue
    return f"made {done} files and directories private (chmod go-rwx)"


def _inspect(store: MemoryStore, report: CheckReport) -> None:
    # Privacy first: it holds whatever else is wrong.
    report.exposed = _exposed(store.root)
    if report.exposed:
        example = report.exposed[0]
        what = "the store's directory" if example == store.root else str(example.relative_to(store.root))
        mode = stat.S_IMODE(os.stat(example).st_mode)
        fix = f"chmod -R go-rwx {shlex.quote(str(store.root))}"
        report.problems.append(Problem(
            "privacy", f"{len(report.exposed)} files and directories of the store are open to group or others "
                       f"(e.g. {what}, mode {mode:04o}); make them private with `{fix}`", True))
    repo = store.repo
    report.head = repo.head()
    if report.head is None:
        report.problems.append(Problem("git", "the repository has no commit; run `memos init`", False))
        return
    fsck = repo.probe(["fsck", "--connectivity-only", "--no-dangling", "--no-progress"])
    if fsck.returncode != 0:
        first = (fsck.stderr or fsck.stdout).strip().splitlines()[:1]
        report.problems.append(Problem("git", f"git fsck found damage: {first[0] if first else fsck.returncode}", False))
    if store._journal.exists():
        report.problems.append(Problem("git", "a write was interrupted; `memos check --repair` (or any write) undoes it",
                                       True))
    dirty = repo.dirty(files.UNITS_DIR, params.PARAMS_DIR, "memos.toml", ".gitignore")
    temps = [line[3:] for line in dirty if line.startswith("?? ") and (files.is_temp(line[3:]) or params.is_temp(line[3:]))]
    dirty = [line for line in dirty if line[3:] not in temps]
    if temps:
        report.temp_files = temps
        report.problems.append(Problem(
            "git", f"{len(temps)} temporary unit files left by a killed write ({temps[0]})", True))
    if dirty:
        shown = ", ".join(line[3:] for line in dirty[:3]) + (" ..." if len(dirty) > 3 else "")
        report.problems.append(Problem(
            "git", f"{len(dirty)} uncommitted changes ({shown}): commit them with git, or undo them with "
                   "`git checkout -- PATH` / `git clean`", False))

    # The unit files at HEAD.
    units = {}
    paths = repo.files(report.head, files.UNITS_DIR)
    for spec, data in repo.cat(f"{report.head}:{p}" for p in paths):
        path = spec.split(":", 1)[1]
        try:
            if files.id_of(path) is None:
                raise MemosError(f"{path}: not a unit file (units/X/Y/ID.json)")
            unit = files.loads(data or b"", path)
            units[unit.id] = unit
        except MemosError as exc:
            report.problems.append(Problem("units", f"{exc}; fix or remove the file and commit", False))
    report.units = len(units)

    # Parametric memory: committed like the unit files, so reported, never "repaired".
    report.params, found = params.inspect(store)
    for message in found:
        report.problems.append(Problem("params", message, False))

    # The table.
    table = store.table
    if table.marker().get("head") != report.head:
        report.problems.append(Problem("table", "the search table does not reflect the last commit", True))
    if not table.exists():
        if units:
            report.problems.append(Problem("table", "the search table is missing", True))
        return
    try:
        data = table.select(None)
        rows = data.drop_columns(["vector"]).to_pylist()
    except Exception as exc:  # Lance raises many kinds of errors for damaged files
        report.problems.append(Problem("table", f"the search table cannot be read: {exc}", True))
        return
    report.rows = len(rows)
    from memos_cli.plaintext.table import from_row
    from memos_cli.store.history import changed_fields

    seen: set[str] = set()
    mismatched, extra, duplicated = [], [], []
    for row in rows:
        uid = row["id"]
        if uid in seen:
            duplicated.append(uid)
            continue
        seen.add(uid)
        unit = units.get(uid)
        if unit is None:
            extra.append(uid)
        elif changed_fields(unit, from_row(row)):
            mismatched.append(uid)
    missing = [uid for uid in units if uid not in seen]
    for what, ids in (("missing from", missing), ("not in the unit files but in", extra),
                      ("different from their files in", mismatched), ("more than once in", duplicated)):
        if ids:
            report.problems.append(Problem(
                "table", f"{len(ids)} units {what} the search table (e.g. {', '.join(ids[:3])})", True))

    # Embeddings.
    embedder = store.embedder
    if table.dim != embedder.dim:
        report.reembed_all = True
        report.problems.append(Problem(
            "embeddings", f"the vectors have {table.dim} dimensions, the model {embedder.model_id} makes "
                          f"{embedder.dim}", True))
    else:
        import numpy as np

        column = data["vector"].combine_chunks()
        missing_vec = column.is_null().to_numpy(zero_copy_only=False)
        vectors = column.fill_null([0.0] * embedder.dim).values.to_numpy().reshape(len(rows), embedder.dim) \
            if len(rows) else np.zeros((0, embedder.dim), dtype=np.float32)
        sound = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
        bad: dict[str, list[str]] = {}
        for i, row in enumerate(rows):
            why = None
            if row.get("model") != embedder.model_id:
                why = f"embedded by {row.get('model') or 'an unknown model'}, not {embedder.model_id}"
            elif missing_vec[i]:
                why = "have no vector"
            elif not sound[i]:
                why = "have a vector that is zero or not finite"
            if why:
                bad.setdefault(why, []).append(row["id"])
        for why, ids in bad.items():
            report.reembed.update(ids)
            report.problems.append(Problem("embeddings", f"{len(ids)} units {why} (e.g. {', '.join(ids[:3])})", True))

    # The full-text index.
    try:
        names = {i.name for i in table.ds.describe_indices()}
    except Exception:
        names = set()
    from memos_cli.plaintext.table import FTS_INDEX

    if rows and FTS_INDEX not in names:
        report.problems.append(Problem("index", "the full-text index is missing", True))

    # Activation memory (KV caches, derived data out of git).
    from memos_cli.store.caches import problems

    for problem in problems(store):
        report.problems.append(Problem("kv", problem.message, True))
