"""Sync between machines: remotes, ``memos clone``, and ``memos sync`` (fetch, merge memory, push).

Any git remote works (a bare repository on disk, ssh, a git host): the
store's branch ``main`` is fetched into ``refs/remotes/NAME/main``, merged,
and pushed back. Network work (fetch, push) is done without the store's
lock; the merge is one transaction under it, so a sync killed at any point
leaves both sides usable: git's ref updates are atomic, and a merge cut off
is undone by the next command like any write.

The merge is memory-level, not text-level (``plaintext.merge``):

- when one side's history contains the other's, HEAD moves to the newer one
  (a fast-forward: no merge commit, the two stores end with one history);
- otherwise each unit changed on one side only is taken from it, and a unit
  changed on both is merged field by field (``merge3``), with a conflict
  reported when both changed the same field differently (``memos conflicts``
  lists them from history). The merge is one commit with both sides as
  parents, so the version not kept stays in history. Other files changed on
  both sides (``memos.toml``, a parametric memory's record) keep this
  machine's version, also reported; parametric blobs follow the records.

The search table follows: rows of units that changed are written in the same
transaction, embedding only texts this store has not seen (before the lock).

Purge and sync. A purge rewrites history, and a remote (or another clone)
that synced before it still holds the purged text in its history. Each purge
commit names its ids (``Memos-Purged``), so:

- a purge made on the other side is applied here before merging (the units
  are removed from this store and its history too: that is what a purge asks),
  for the units the other side's history really lacks: a commit that only
  says it purged purges nothing here;
- when the other side still holds units purged here, the sync is refused and
  the fetched history deleted again (objects pruned), unless ``--purge-remote``:
  then the fetched history is rewritten without them, merged, and pushed with
  ``--force-with-lease``; a remote that is a folder on this machine is pruned
  as well, a remote on a host keeps the old objects until its own garbage
  collection (the sync says so).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import MemosError, RemoteError, StoreError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.merge import Conflict, merge3
from memos_cli.plaintext.units import MemoryUnit, is_unit_id
from memos_cli.store import killpoint
from memos_cli.store import params as params_store
from memos_cli.store.config import CONFIG_NAME, SCHEMA_VERSION

if TYPE_CHECKING:
    from memos_cli.store.repo import StoreRepo
    from memos_cli.store.store import MemoryStore

BRANCH = "main"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}  # fail rather than wait
_CONFLICT_RE = re.compile(r"^conflict (\S+) \[([^\]]*)\] kept=(here|remote) other=([0-9a-f]{40}): (.*)$")
PUSH_TRIES = 3


@dataclass
class Remote:
    name: str
    url: str

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.shown}


_USERINFO_RE = re.compile(r"^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", re.IGNORECASE)


def shown_url(url: str) -> str:
    """A URL as printed: a password in it (https://me:TOKEN@host/...) hidden."""
    return _USERINFO_RE.sub(r"\1:***@", url)


@dataclass
class SyncReport:
    remote: str
    url: str
    action: str = "up to date"  # "up to date", "pushed", "fast-forward", "merged"
    taken: list[str] = field(default_factory=list)  # units taken from the remote as they are there
    merged: list[str] = field(default_factory=list)  # units merged field by field
    removed: list[str] = field(default_factory=list)  # units whose files the other side removed
    conflicts: list[Conflict] = field(default_factory=list)
    other_conflicts: list[str] = field(default_factory=list)  # files other than units changed on both sides
    pushed: bool = False
    purged_here: list[str] = field(default_factory=list)  # purges made on the remote, applied here
    purged_remote: list[str] = field(default_factory=list)  # units purged here, removed from the remote's history
    head: str = ""
    commit: str | None = None  # the merge commit, when one was made
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"remote": self.remote, "url": self.url, "action": self.action, "taken": self.taken,
                "merged": self.merged, "removed": self.removed, "conflicts": [c.to_json() for c in self.conflicts],
                "other_conflicts": self.other_conflicts, "pushed": self.pushed, "purged_here": self.purged_here,
                "purged_remote": self.purged_remote, "head": self.head, "commit": self.commit,
                "seconds": round(self.seconds, 3), "notes": self.notes}


# ---- remotes -------------------------------------------------------------------------------


def check_remote_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith((".lock", ".")) or ".." in name:
        raise UsageError(f"bad remote name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def remotes(store: MemoryStore) -> list[Remote]:
    proc = store.repo.probe(["config", "--get-regexp", r"^remote\..*\.url$"])
    found = []
    for line in proc.stdout.splitlines():
        key, _, url = line.partition(" ")
        found.append(Remote(key[len("remote."):-len(".url")], url))
    return sorted(found, key=lambda r: r.name)


def add_remote(store: MemoryStore, name: str, url: str) -> Remote:
    """Name a remote (git's own config, outside history; nothing is contacted yet)."""
    check_remote_name(name)
    if not isinstance(url, str) or not url.strip() or url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise UsageError(f"bad remote URL {url!r}")
    if any(r.name == name for r in remotes(store)):
        raise UsageError(f"a remote named {name} exists; remove it first (memos remote remove {name})")
    url = _local_url(url)
    store.repo.run(["remote", "add", name, url])
    return Remote(name, url)


def _local_url(url: str) -> str:
    """A folder given as a relative path, made absolute: git resolves it from wherever it runs."""
    if "://" in url or re.match(r"^[^/]+:", url):  # a URL, or scp-like host:path
        return url
    return str(Path(url).expanduser().absolute())


def remove_remote(store: MemoryStore, name: str) -> Remote:
    found = {r.name: r for r in remotes(store)}
    if name not in found:
        raise UsageError(f"no remote named {name!r}" + (f"; remotes: {', '.join(found)}" if found else ""))
    store.repo.run(["remote", "remove", name])
    return found[name]


def default_remote(store: MemoryStore) -> Remote:
    found = remotes(store)
    if not found:
        raise UsageError("this store has no remote; add one with `memos remote add NAME URL` (or clone with `memos clone`)")
    if len(found) == 1:
        return found[0]
    for r in found:
        if r.name == "origin":
            return r
    raise UsageError(f"this store has {len(found)} remotes ({', '.join(r.name for r in found)}); say which: memos sync NAME")


def _remote(store: MemoryStore, name: str | None) -> Remote:
    if name is None:
        return default_remote(store)
    found = {r.name: r for r in remotes(store)}
    if name not in found:
        raise UsageError(f"no remote named {name!r}; add it with `memos remote add {name} URL`")
    return found[name]


# ---- git with the network ------------------------------------------------------------------


def _git_net(repo: StoreRepo, args: list[str]) -> subprocess.CompletedProcess[str]:
    return repo.probe(args, env=_NO_PROMPT)


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else f"git exited {proc.returncode}").removeprefix("fatal: ").removeprefix("error: ")


def tracking_ref(name: str) -> str:
    return f"refs/remotes/{name}/{BRANCH}"


def fetch(store: MemoryStore, remote: Remote) -> str | None:
    """Fetch the remote's ``main``; its commit, or None when the remote has none yet (new and empty)."""
    repo = store.repo
    proc = _git_net(repo, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote.name,
                           f"+refs/heads/{BRANCH}:{tracking_ref(remote.name)}"])
    if proc.returncode != 0:
        if "couldn't find remote ref" in proc.stderr:
            return None
        raise RemoteError(f"cannot fetch from {remote.name} ({remote.shown}): {_last_line(proc)}")
    return repo.run(["rev-parse", tracking_ref(remote.name)]).strip()


def check_memos_store(repo: StoreRepo, commit: str, remote: Remote) -> None:
    """Refuse what is not a memos store, or one made by a newer memos."""
    import tomllib

    data = next(repo.cat([f"{commit}:{CONFIG_NAME}"]))[1]
    if data is None:
        raise RemoteError(f"{remote.name} ({remote.shown}) is not a memos store: its {BRANCH} branch has no {CONFIG_NAME}")
    try:
        version = tomllib.loads(data.decode("utf-8")).get("store", {}).get("schema_version")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise RemoteError(f"{remote.name} ({remote.shown}): its {CONFIG_NAME} cannot be read") from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise RemoteError(f"{remote.name} ({remote.shown}) is not a memos store: its {CONFIG_NAME} has no schema_version")
    if version > SCHEMA_VERSION:
        raise RemoteError(f"{remote.name} ({remote.shown}) was written by a newer memos (schema {version}; this memos "
                          f"knows up to {SCHEMA_VERSION}); upgrade memos here first")


def _is_ancestor(repo: StoreRepo, a: str, b: str) -> bool:
    return repo.probe(["merge-base", "--is-ancestor", a, b]).returncode == 0


# ---- purges ----------------------------------------------------------------------------------


def purged_ids(repo: StoreRepo, *revs: str) -> set[str]:
    """The ids purge commits in ``revs`` (git log arguments) name."""
    out = repo.run(["log", "--format=%B%x00", "--grep=^Memos-Op: purge$", *revs, "--"])
    ids: set[str] = set()
    for message in out.split("\0"):
        for line in message.splitlines():
            key, _, value = line.partition(": ")
            if key == "Memos-Purged" or (key == "ids" and "..." not in value):  # older purges listed up to 20
                ids.update(v for v in value.split() if is_unit_id(v))
    return ids


def _touching(repo: StoreRepo, ids: set[str], *revs: str) -> set[str]:
    """Those of these ids whose unit file is in the commits ``revs`` select."""
    if not ids:
        return set()
    paths = [files.unit_path(u) for u in sorted(ids)]
    found: set[str] = set()
    for start in range(0, len(paths), 500):
        out = repo.run(["log", "--format=", "--name-only", *revs, "--", *paths[start:start + 500]])
        found.update(uid for line in out.splitlines() if (uid := files.id_of(line.strip())))
    return found & ids


def _drop_fetched(store: MemoryStore, remote: Remote) -> None:
    """Delete the fetched history and prune its objects (under the store's lock)."""
    repo = store.repo
    repo.probe(["update-ref", "-d", tracking_ref(remote.name)])
    repo.run(["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"])
    repo.gc(prune=True)


def _rewrite_fetched(store: MemoryStore, remote: Remote, ids: set[str]) -> str:
    """Drop these units' files from every commit of the fetched history (as their purge did here)."""
    ref = tracking_ref(remote.name)
    args = [sys.executable, "-m", "git_filter_repo", "--quiet", "--force", "--partial", "--refs", ref,
            "--invert-paths", "--prune-empty", "never", "--prune-degenerate", "never", "--replace-refs", "delete-no-add"]
    for uid in sorted(ids):
        args += ["--path", files.unit_path(uid)]
    proc = subprocess.run(args, cwd=store.root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StoreError(f"git filter-repo failed: {_last_line(proc)}")
    shutil.rmtree(store.repo.git_dir / "filter-repo", ignore_errors=True)
    return store.repo.run(["rev-parse", ref]).strip()


def _prune_local_remote(url: str) -> bool:
    """Prune a remote that is a repository in a folder here (its unreachable objects); False for others."""
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    if "://" in url and not url.startswith("file://") or not path.is_dir():
        return False
    for args in (["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"], ["gc", "-q", "--prune=now"]):
        if subprocess.run(["git", "-C", str(path), *args], capture_output=True).returncode != 0:
            return False
    return True


# ---- the merge -------------------------------------------------------------------------------


@dataclass
class _Plan:
    ours: str
    theirs: str
    fast_forward: bool
    writes: dict[str, bytes | None] = field(default_factory=dict)  # path -> new bytes, None: remove
    units: list[MemoryUnit] = field(default_factory=list)  # rows to write in the table
    removed: list[str] = field(default_factory=list)  # ids whose rows go
    taken: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    other_conflicts: list[str] = field(default_factory=list)


def _changes(repo: StoreRepo, old: str, new: str) -> dict[str, str]:
    """Every file that differs between two commits: path -> git's status letter."""
    return {path: status for status, path in repo.changed(old, new, ".")}


def _blobs(repo: StoreRepo, rev: str, paths: list[str]) -> dict[str, bytes | None]:
    return {spec.split(":", 1)[1]: data for spec, data in repo.cat(f"{rev}:{p}" for p in paths)}


def plan_merge(store: MemoryStore, ours: str, theirs: str) -> _Plan:
    """What merging ``theirs`` into ``ours`` writes; read from git only (no lock needed)."""
    from memos_cli.store.repo import EMPTY_TREE

    repo = store.repo
    if _is_ancestor(repo, ours, theirs):  # a fast-forward: take their files as they are
        plan = _Plan(ours, theirs, True)
        changed = _changes(repo, ours, theirs)
        present = [p for p, status in changed.items() if status != "D"]
        plan.writes = {p: None for p, status in changed.items() if status == "D"}
        plan.writes.update(_blobs(repo, theirs, present))
        plan.taken = [uid for p in present if (uid := files.id_of(p))]
    else:
        base = repo.probe(["merge-base", ours, theirs]).stdout.strip() or EMPTY_TREE
        plan = _Plan(ours, theirs, False)
        mine, other = _changes(repo, base, ours), _changes(repo, base, theirs)
        only_theirs = [p for p in other if p not in mine]
        both = [p for p in other if p in mine]
        plan.writes = {p: None for p in only_theirs if other[p] == "D"}
        plan.writes.update(_blobs(repo, theirs, [p for p in only_theirs if other[p] != "D"]))
        plan.taken = [uid for p in only_theirs if other[p] != "D" and (uid := files.id_of(p))]
        if both:
            _merge_both(store, plan, base, both)
    for path, data in list(plan.writes.items()):
        uid = files.id_of(path)
        if uid is None:
            continue
        if data is None:
            plan.removed.append(uid)
        else:
            plan.units.append(files.loads(data, path))
    if not plan.fast_forward:
        _follow_blobs(store, plan)
    plan.taken = [u for u in plan.taken if u not in set(plan.merged)]
    return plan


def _merge_both(store: MemoryStore, plan: _Plan, base: str, paths: list[str]) -> None:
    """Files changed on both sides since ``base``: units field by field, other files this machine's."""
    repo = store.repo
    at_base, at_ours, at_theirs = (_blobs(repo, rev, paths) for rev in (base, plan.ours, plan.theirs))
    for path in paths:
        o, t = at_ours[path], at_theirs[path]
        if o == t:
            continue
        uid = files.id_of(path)
        if uid is None:
            if params_store.sha_of(path) is None:  # a blob's content is its name: _follow_blobs settles them
                plan.other_conflicts.append(f"{path}: changed on both sides; kept this machine's (the other is in "
                                            f"history: git show {plan.theirs[:10]}:{path})")
            continue
        if o is None or t is None:  # removed on one side (a rollback), changed on the other: keep the change
            if t is not None:
                plan.writes[path] = t
                plan.taken.append(uid)
            plan.conflicts.append(Conflict(uid, ["file"], "here" if t is None else "remote",
                                           "removed on one side, changed on the other: kept the changed unit"))
            continue
        b = at_base[path]
        merged, conflict = merge3(files.loads(b, path) if b is not None else None, files.loads(o, path),
                                  files.loads(t, path))
        data = files.dumps(merged)
        if data != o:
            plan.writes[path] = data
        if conflict is not None:
            plan.conflicts.append(conflict)
        plan.merged.append(uid)


def _follow_blobs(store: MemoryStore, plan: _Plan) -> None:
    """After a merge of parametric records: the blobs they name are present, the others gone."""
    repo = store.repo
    ours_blobs = set(repo.files(plan.ours, params_store.BLOBS_DIR))
    theirs_blobs = set(repo.files(plan.theirs, params_store.BLOBS_DIR))
    records = {p: d for p, d in _blobs(repo, plan.ours, repo.files(plan.ours, params_store.PARAMS_DIR)).items()
               if params_store.name_of(p)}
    for path, data in plan.writes.items():
        if params_store.name_of(path):
            records[path] = data  # type: ignore[assignment]
    used = set()
    for path, data in records.items():
        if data is not None:
            try:
                used.add(params_store.blob_path(params_store.loads(data, path).blob))
            except MemosError:
                continue
    present = (ours_blobs | {p for p, d in plan.writes.items() if d is not None and params_store.sha_of(p)}) - {
        p for p, d in plan.writes.items() if d is None}
    for path in present - used:  # no record names it any more
        if path in ours_blobs:
            plan.writes[path] = None
        else:
            plan.writes.pop(path, None)
    missing = used - present  # a record kept names a blob the other side removed
    plan.writes.update(_blobs(repo, plan.ours, [p for p in missing if p in ours_blobs]))
    plan.writes.update(_blobs(repo, plan.theirs, [p for p in missing if p not in ours_blobs and p in theirs_blobs]))


def _apply(store: MemoryStore, plan: _Plan, remote: Remote) -> str | None:
    """Write the plan in one transaction; returns the new HEAD. Raises ``_Moved`` when HEAD moved since."""
    from memos_cli.store.follow import attach_vectors

    attach_vectors(store, plan.units)  # before the lock: only texts this store has not seen are embedded
    with store.transaction("sync", cube="*", fold_access=False) as txn:
        if store.repo.head() != plan.ours:
            raise _Moved
        store._refuse_hand_edited([files.id_of(p) for p in plan.writes if files.id_of(p)])  # type: ignore[misc]
        others = [p for p in plan.writes if not files.id_of(p)]
        edited = sorted(store.repo.modified(others))
        if edited:
            raise StoreError(f"{edited[0]} has changes not committed with git; commit or undo them, then sync again; "
                             "nothing was merged")
        store._note_paths(txn, list(plan.writes))
        for path, data in plan.writes.items():
            target = store.root / path
            if data is None:
                target.unlink(missing_ok=True)
                continue
            _mkdirs(store.root, target.parent)
            tmp = store.root / files.temp_path(path)
            files.write_private(tmp, data)
            os.replace(tmp, target)
        store.check_dim()
        if plan.units:
            store.table.upsert(plan.units)
        store.table.delete(plan.removed)
        txn.ids = sorted({u.id for u in plan.units} | set(plan.removed))
        if plan.fast_forward:
            txn.fast_forward = plan.theirs
        else:
            txn.merged = plan.theirs
            txn.summary = (f"{_n(len(plan.taken), 'unit')} from {remote.name}, {len(plan.merged)} merged, "
                           f"{_n(len(plan.conflicts), 'conflict')}")
            for c in plan.conflicts:
                other = plan.theirs if c.kept == "here" else plan.ours
                txn.details.append(f"conflict {c.id} [{','.join(c.fields)}] kept={c.kept} other={other}: {c.reason}")
            txn.details += plan.other_conflicts
            txn.trailers["Memos-Remote"] = remote.name
            txn.trailers["Memos-Conflicts"] = str(len(plan.conflicts) + len(plan.other_conflicts))
    store._config = None  # memos.toml may have changed: read again when next needed
    return store.repo.head()


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def _mkdirs(root: Path, directory: Path) -> None:
    missing = []
    while directory != root and not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=files.DIR_MODE, exist_ok=True)


class _Moved(Exception):
    """HEAD moved between the plan and the lock (another write landed): plan again."""


# ---- sync ------------------------------------------------------------------------------------


def sync(store: MemoryStore, name: str | None = None, *, purge_remote: bool = False, push: bool = True) -> SyncReport:
    """Fetch, merge and push (see the module's docstring)."""
    started = time.perf_counter()
    store.config  # noqa: B018 - a missing or too-new store fails here
    remote = _remote(store, name)
    report = SyncReport(remote.name, remote.shown)
    store._ensure_current()  # recovers an interrupted write, catches the table up
    for _ in range(PUSH_TRIES):
        theirs = fetch(store, remote)
        killpoint.reached("sync.fetched")
        rewrote_from = None
        if theirs is not None:
            check_memos_store(store.repo, theirs, remote)
            theirs, rewrote_from = _settle_purges(store, remote, theirs, purge_remote, report)
            _merge(store, remote, theirs, report)
        killpoint.reached("sync.merged")
        head = store.repo.head() or ""
        report.head = head
        if not push or (theirs == head and rewrote_from is None):
            if not push and theirs != head:
                report.notes.append(f"{remote.name} is behind this store; not pushed (--no-push)")
            break
        lease = [f"--force-with-lease=refs/heads/{BRANCH}:{rewrote_from}"] if rewrote_from else []
        proc = _git_net(store.repo, ["push", "--quiet", "--no-verify", *lease, remote.name, f"HEAD:refs/heads/{BRANCH}"])
        if proc.returncode == 0:
            killpoint.reached("sync.pushed")
            report.pushed = True
            if report.action == "up to date":
                report.action = "pushed"
            if rewrote_from:
                _after_remote_rewrite(store, remote, report)
            break
        text = proc.stderr
        if "rejected" in text or "stale info" in text or "fetch first" in text:
            continue  # the remote moved since the fetch: fetch and merge again
        raise RemoteError(f"could not push to {remote.name} ({remote.shown}): {_last_line(proc)}"
                          + ("; the merge is done here, run `memos sync` again" if report.action == "merged" else ""))
    else:
        raise RemoteError(f"{remote.name} kept changing while this sync pushed ({PUSH_TRIES} tries); run `memos sync` again")
    report.seconds = time.perf_counter() - started
    return report


def _settle_purges(store: MemoryStore, remote: Remote, theirs: str, purge_remote: bool,
                   report: SyncReport) -> tuple[str, str | None]:
    """Carry purges across (see the module's docstring); (their commit to merge, the commit their
    history had before it was rewritten here, or None)."""
    from memos_cli.store.purge import purge

    repo = store.repo
    ours = repo.head() or ""
    if theirs == ours or _is_ancestor(repo, theirs, ours):
        return theirs, None
    # Purges made there, whose units this store still holds in its history: purge them here too. Only
    # those the remote's history really lacks: a purge commit's message alone does not purge anything here.
    theirs_purged = purged_ids(repo, theirs, "--not", ours) - purged_ids(repo, ours)
    here = _touching(repo, theirs_purged, ours) - _touching(repo, theirs_purged, theirs)
    if here:
        done = purge(store, sorted(here), in_history=True)
        report.purged_here = done.ids
        report.notes.append(f"applied a purge made on {remote.name}: {_n(len(done.ids), 'unit')} removed from this store and "
                            "its history")
        theirs = repo.run(["rev-parse", tracking_ref(remote.name)]).strip()
        ours = repo.head() or ""
    # Units purged here that their history still holds.
    tainted = _touching(repo, purged_ids(repo, ours), theirs, "--not", ours)
    if not tainted:
        return theirs, None
    if not purge_remote:
        with store.locked():
            _drop_fetched(store, remote)
        raise RemoteError(
            f"{remote.name} still holds {_n(len(tainted), 'unit')} purged here (its history is from before the purge), so "
            f"nothing was merged and its history was not kept; `memos sync {remote.name} --purge-remote` removes them "
            f"from {remote.name}'s history too")
    original = theirs
    with store.locked():
        theirs = _rewrite_fetched(store, remote, tainted)
    report.purged_remote = sorted(tainted)
    return theirs, original


def _after_remote_rewrite(store: MemoryStore, remote: Remote, report: SyncReport) -> None:
    """After pushing a history rewritten without purged units: prune the old objects here and, when
    the remote is a folder, there."""
    with store.locked():
        repo = store.repo
        repo.run(["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"])
        repo.gc(prune=True)
    if _prune_local_remote(remote.url):
        report.notes.append(f"removed {_n(len(report.purged_remote), 'purged unit')} from {remote.name}'s history, "
                            "and pruned it")
    else:
        report.notes.append(f"removed {_n(len(report.purged_remote), 'purged unit')} from {remote.name}'s history; the "
                            "host keeps the old objects until its own garbage collection (on a git host, ask it to "
                            "run one); other clones must sync, or be cloned again")


def _merge(store: MemoryStore, remote: Remote, theirs: str, report: SyncReport) -> None:
    repo = store.repo
    for _ in range(PUSH_TRIES):
        ours = repo.head() or ""
        if theirs == ours or _is_ancestor(repo, theirs, ours):
            return
        plan = plan_merge(store, ours, theirs)
        try:
            _apply(store, plan, remote)
        except _Moved:
            continue
        report.action = "fast-forward" if plan.fast_forward else "merged"
        report.commit = None if plan.fast_forward else repo.head()
        report.taken, report.merged = plan.taken, plan.merged
        report.removed, report.conflicts, report.other_conflicts = plan.removed, plan.conflicts, plan.other_conflicts
        return
    raise StoreError("the store kept changing while this sync merged; run `memos sync` again")


# ---- clone -----------------------------------------------------------------------------------


def clone(url: str, dest: str, progress: Any = None) -> dict[str, Any]:
    """Clone a memos store into ``dest`` (new or empty) and build its search table."""
    from memos_cli.store.follow import catch_up
    from memos_cli.store.store import MemoryStore

    started = time.perf_counter()
    target = Path(dest).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not empty; clone into a new or empty folder")
    url = _local_url(url)
    made = not target.exists()
    # No hard links to a local source's objects: they would keep its files' modes, not this store's 0600.
    proc = subprocess.run(["git", "clone", "--quiet", "--no-tags", "--no-hardlinks", "--branch", BRANCH,
                           "-c", "core.sharedRepository=0600", url, str(target)], capture_output=True, text=True, umask=0o077,
                          env={**os.environ, **_NO_PROMPT})

    def undo() -> None:
        if made:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()

    if proc.returncode != 0:
        undo()
        if "Remote branch" in proc.stderr and "not found" in proc.stderr:
            raise RemoteError(f"{shown_url(url)} is not a memos store: it has no {BRANCH} branch")
        raise RemoteError(f"cannot clone {shown_url(url)}: {_last_line(proc)}")
    try:
        os.chmod(target, files.DIR_MODE)
        if not (target / CONFIG_NAME).is_file():
            raise RemoteError(f"{shown_url(url)} is not a memos store: its {BRANCH} branch has no {CONFIG_NAME}")
        store = MemoryStore(target)
        store.config  # noqa: B018 - a store of a newer schema is refused here
        store.repo.ensure_settings()
        (target / "tables").mkdir(mode=files.DIR_MODE, exist_ok=True)
        with store.locked():
            done = catch_up(store, progress)
        units = store.table.count(None) if store.table.exists() else 0
    except BaseException as exc:
        undo()
        if isinstance(exc, StoreError):
            raise RemoteError(f"{shown_url(url)}: {exc}") from None
        raise
    return {"store": str(target), "url": shown_url(url), "remote": "origin", "units": units, "head": store.repo.head(),
            "table": done, "seconds": round(time.perf_counter() - started, 3)}


# ---- conflicts -------------------------------------------------------------------------------


def conflicts(store: MemoryStore, limit: int = 50) -> list[dict[str, Any]]:
    """The conflicts recorded by sync merges, newest first: each with the text not kept."""
    repo = store.repo
    found: list[dict[str, Any]] = []
    out = repo.run(["log", "--format=%H%x1e%ct%x1e%B%x1f", "--grep=^Memos-Op: sync$", "HEAD", "--"])
    for chunk in out.split("\x1f"):
        chunk = chunk.strip("\n")
        if not chunk:
            continue
        sha, when, body = chunk.split("\x1e", 2)
        remote = next((ln.split(": ", 1)[1] for ln in body.splitlines() if ln.startswith("Memos-Remote: ")), "")
        for line in body.splitlines():
            match = _CONFLICT_RE.match(line)
            if not match:
                continue
            uid, fields, kept, other, reason = match.groups()
            found.append({"id": uid, "commit": sha, "when": int(when), "remote": remote,
                          "fields": [f for f in fields.split(",") if f], "kept": kept, "other": other, "reason": reason})
            if len(found) >= limit:
                break
        if len(found) >= limit:
            break
    texts = dict(repo.cat(f"{c['other']}:{files.unit_path(c['id'])}" for c in found))
    for c in found:
        data = texts.get(f"{c['other']}:{files.unit_path(c['id'])}")
        c["other_text"] = files.loads(data, files.unit_path(c["id"])).text if data else None
    return found
