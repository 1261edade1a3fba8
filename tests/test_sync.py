"""Sync between machines: remotes, clone, memory-level merges, conflicts, purges that travel, faults."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from memos_cli.errors import RemoteError, UsageError
from memos_cli.portable import sync as syncing
from memos_cli.store import check as checking
from memos_cli.store.killpoint import ENV as KILL_AT
from memos_cli.store.purge import purge
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, git, head

SECRET = "hunter2-Zebra-Quokka-7781"
ALLOW = {"*": "allow"}  # a planted secret, on purpose


def _bare(tmp_path: Path, name: str = "remote.git") -> Path:
    path = tmp_path / name
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def _objects(root: Path) -> bytes:
    """Every object of a repository, reachable or not, loose or packed."""
    return subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=root, capture_output=True,
                          check=True).stdout


def _texts(store: MemoryStore, status: str | None = "active") -> dict[str, str]:
    from memos_cli.plaintext.retrieval import Filters

    return {u.id: u.text for u in store.list(Filters(status=status), limit=0)}


def _pair(store: MemoryStore, tmp_path: Path, embedder) -> tuple[MemoryStore, MemoryStore, Path]:
    """``store`` pushed to a new bare remote, and a clone of it."""
    remote = _bare(tmp_path)
    syncing.add_remote(store, "origin", str(remote))
    assert syncing.sync(store).action == "pushed"
    syncing.clone(str(remote), str(tmp_path / "laptop"))
    return store, MemoryStore(tmp_path / "laptop", embedder=embedder), remote


def test_remotes_are_named_listed_and_removed(store, tmp_path):
    with pytest.raises(UsageError, match="no remote"):
        syncing.sync(store)
    added = syncing.add_remote(store, "usb", "relative/path.git")
    assert Path(added.url).is_absolute()
    syncing.add_remote(store, "host", "ssh://me@example.invalid/srv/memory.git")
    assert [r.name for r in syncing.remotes(store)] == ["host", "usb"]
    with pytest.raises(UsageError, match="say which"):
        syncing.sync(store)
    with pytest.raises(UsageError, match="exists"):
        syncing.add_remote(store, "usb", "/elsewhere")
    for bad in ("-x", "a b", "../up", "x.lock", ""):
        with pytest.raises(UsageError, match="bad remote name"):
            syncing.add_remote(store, bad, "/x")
    syncing.remove_remote(store, "usb")
    with pytest.raises(UsageError, match="no remote named"):
        syncing.remove_remote(store, "usb")
    assert git(store.root, "status", "--porcelain") == ""  # remotes are git config, outside history


def test_clone_and_syncing_in_turns_never_lose_a_write(store, tmp_path, embedder):
    first = store.add("Alice moved to Lisbon in March 2023", tags=["alice"])
    desk, laptop, remote = _pair(store, tmp_path, embedder)
    assert _texts(laptop) == _texts(desk)
    assert laptop.recall("where does Alice live", 1)[0].unit.id == first.id  # its search table was built
    assert syncing.sync(laptop).action == "up to date"

    written: set[str] = {first.id}
    for turn in range(3):  # each machine writes, then syncs, in turns
        written.add(desk.add(f"desk note {turn}").id)
        written.add(laptop.add(f"laptop note {turn}").id)
        syncing.sync(desk)
        report = syncing.sync(laptop)
        assert report.action == "merged" and report.pushed
        assert syncing.sync(desk).action == "fast-forward"
    assert set(_texts(desk)) == set(_texts(laptop)) == written
    assert head(desk.root) == head(laptop.root) == git(remote, "rev-parse", "main").strip()
    for s in (desk, laptop):
        report = checking.check(s)
        assert report.ok, [p.message for p in report.problems]
    assert len(laptop.recall("laptop note 2", 1)) == 1


def test_a_unit_changed_on_both_sides_is_merged_field_by_field(store, tmp_path, embedder):
    unit = store.add("Bob drinks tea", tags=["bob"], meta={"since": 2020, "where": "home"})
    desk, laptop, _ = _pair(store, tmp_path, embedder)
    desk.edit(unit.id, {"tags": ["bob", "drinks"], "meta": {"since": 2020, "where": "office"}})
    laptop.edit(unit.id, {"text": "Bob drinks green tea", "tags": ["bob", "tea"], "meta": {"since": 2020, "where": "home",
                                                                                          "cups": 3}})
    desk.recall("Bob", 1)
    desk.add("a write that folds the access count in")
    syncing.sync(desk)
    report = syncing.sync(laptop)
    assert report.action == "merged" and report.merged == [unit.id] and report.conflicts == []
    merged = laptop.get(unit.id)
    assert merged.text == "Bob drinks green tea"  # changed on one side only
    assert merged.tags == ["bob", "tea", "drinks"]  # united
    assert merged.meta == {"since": 2020, "where": "office", "cups": 3}  # key by key
    assert merged.access_count == 1
    assert laptop.recall("green tea", 1)[0].unit.id == unit.id  # the table follows the merge


def test_both_changed_the_text_the_later_wins_and_the_other_is_a_conflict_kept_in_history(store, tmp_path, embedder, cli):
    unit = store.add("Carol lives in Paris")
    desk, laptop, _ = _pair(store, tmp_path, embedder)
    desk.edit(unit.id, {"text": "Carol lives in Berlin"})
    laptop.edit(unit.id, {"text": "Carol lives in Rome"})  # the later change
    syncing.sync(desk)
    report = syncing.sync(laptop)
    (conflict,) = report.conflicts
    assert conflict.id == unit.id and conflict.kept == "here" and conflict.other_text == "Carol lives in Berlin"
    assert laptop.get(unit.id).text == "Carol lives in Rome"
    done = cli("conflicts", "--json", store=laptop.root)
    assert done.returncode == 0, done.err
    (listed,) = json.loads(done.out)
    assert listed["id"] == unit.id and listed["other_text"] == "Carol lives in Berlin" and listed["remote"] == "origin"
    shown = cli("sync", "--json", store=desk.root)
    assert json.loads(shown.out)["action"] == "fast-forward"
    assert desk.get(unit.id).text == "Carol lives in Rome"


def test_forgotten_on_one_side_and_edited_on_the_other_stays_forgotten_with_the_edit(store, tmp_path, embedder):
    unit = store.add("Dan works at Initech")
    desk, laptop, _ = _pair(store, tmp_path, embedder)
    desk.forget([unit.id])
    laptop.edit(unit.id, {"text": "Dan works at Initrode", "tags": ["work"]})
    syncing.sync(desk)
    report = syncing.sync(laptop)
    (conflict,) = report.conflicts
    assert "forgotten" in conflict.reason and conflict.fields == ["status"]
    merged = laptop.get(unit.id)
    assert merged.status == "deleted" and merged.text == "Dan works at Initrode" and merged.tags == ["work"]
    assert unit.id not in _texts(laptop)


def test_a_purge_travels_and_the_text_never_comes_back(store, tmp_path, embedder, cli):
    keep = store.add("Erin likes jazz")
    leak = store.add(f"the server password is {SECRET}", privacy=ALLOW)
    desk, laptop, remote = _pair(store, tmp_path, embedder)
    laptop.add("laptop wrote this")
    syncing.sync(laptop)
    purge(desk, [leak.id])
    assert SECRET.encode() not in _objects(desk.root)

    # The remote still holds it: refused, and what the fetch brought in is pruned again.
    before = head(desk.root)
    done = cli("sync", store=desk.root)
    assert_clean_failure(done, desk.root, before, "--purge-remote")
    assert done.returncode == RemoteError.exit_code
    assert SECRET.encode() not in _objects(desk.root)
    assert SECRET.encode() in _objects(remote)

    # --purge-remote: the remote's history is rewritten without it, and pruned (a folder here).
    report = syncing.sync(desk, purge_remote=True)
    assert report.purged_remote == [leak.id] and report.pushed
    assert SECRET.encode() not in _objects(desk.root)
    assert SECRET.encode() not in _objects(remote)
    assert "laptop wrote this" in _texts(desk).values()  # the merge took the laptop's write

    # The laptop, which still has it, applies the purge when it syncs.
    laptop.add("one more from the laptop")
    report = syncing.sync(laptop)
    assert report.purged_here == [leak.id]
    for root in (desk.root, laptop.root, remote):
        assert SECRET.encode() not in _objects(root), root
    syncing.sync(desk)
    assert set(_texts(desk)) == set(_texts(laptop)) and keep.id in _texts(laptop) and leak.id not in _texts(laptop)
    for s in (desk, laptop):
        assert checking.check(s).ok


def test_remotes_that_cannot_be_used_are_refused_and_change_nothing(store, cli, tmp_path):
    store.add("a memory")
    root, before = store.root, head(store.root)
    cli("remote", "add", "gone", str(tmp_path / "nowhere.git"))
    assert_clean_failure(cli("sync", "gone"), root, before, "cannot fetch from gone")
    other = tmp_path / "other.git"  # a git repository that is not a memos store
    subprocess.run(["git", "init", "-q", str(tmp_path / "src")], check=True)
    (tmp_path / "src" / "README").write_text("hello")
    git(tmp_path / "src", "add", "README")
    git(tmp_path / "src", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "x")
    git(tmp_path / "src", "branch", "-M", "main")
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "src"), str(other)], check=True)
    cli("remote", "add", "other", str(other))
    assert_clean_failure(cli("sync", "other"), root, before, "not a memos store")
    assert_clean_failure(cli("clone", str(other), str(tmp_path / "c1")), match="not a memos store")
    assert not (tmp_path / "c1").exists()
    assert_clean_failure(cli("clone", str(tmp_path / "nowhere.git"), str(tmp_path / "c2")), match="cannot clone")
    assert_clean_failure(cli("sync", "nosuch"), root, before, "no remote named")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_clean_failure(cli("clone", str(other), str(tmp_path / "full")), match="not empty")


def test_a_remote_from_a_newer_memos_is_refused(store, tmp_path, embedder):
    store.add("a memory")
    desk, laptop, remote = _pair(store, tmp_path, embedder)
    config = laptop.config_path.read_text().replace("schema_version = 3", "schema_version = 99")
    assert "schema_version = 99" in config
    laptop.config_path.write_text(config)
    git(laptop.root, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "from the future")
    git(laptop.root, "push", "-q", "origin", "main")
    before = head(desk.root)
    with pytest.raises(RemoteError, match="newer memos"):
        syncing.sync(desk)
    assert head(desk.root) == before


@pytest.mark.slow
@pytest.mark.parametrize("point", ["sync.fetched", "written", "committed", "sync.merged", "sync.pushed"])
def test_a_sync_killed_at_any_point_leaves_both_sides_usable(point, store, tmp_path, embedder, cli):
    store.add("the first memory")
    desk, laptop, remote = _pair(store, tmp_path, embedder)
    mine = desk.add("written on the desk").id
    theirs = laptop.add("written on the laptop").id
    syncing.sync(laptop)
    done = cli("sync", store=desk.root, env={KILL_AT: point})
    assert done.returncode == -signal.SIGKILL, f"not killed at {point}: {done.returncode} {done.err}"
    after = cli("check", store=desk.root)  # the next command puts an interrupted merge right
    assert after.returncode == 0, after.out + after.err
    again = cli("sync", "--json", store=desk.root)
    assert again.returncode == 0, again.err
    syncing.sync(laptop)
    desk = MemoryStore(desk.root, embedder=embedder)
    for s in (desk, laptop):
        assert {mine, theirs} <= set(_texts(s)), point
        assert checking.check(s).ok
    assert head(desk.root) == head(laptop.root) == git(remote, "rev-parse", "main").strip()


def test_sync_from_the_cli(store, cli, tmp_path):
    store.add("from the desk")
    remote = _bare(tmp_path)
    assert cli("remote", "add", "origin", str(remote)).returncode == 0
    listed = cli("remote", "list", "--json")
    assert json.loads(listed.out) == [{"name": "origin", "url": str(remote)}]
    first = cli("sync")
    assert first.returncode == 0 and "pushed" in first.out, first.err
    cloned = cli("clone", str(remote), str(tmp_path / "laptop"), "--json")
    assert cloned.returncode == 0, cloned.err
    assert json.loads(cloned.out)["units"] == 1
    assert cli("add", "from the laptop", store=tmp_path / "laptop").returncode == 0
    assert cli("sync", store=tmp_path / "laptop").returncode == 0
    pulled = cli("sync", "--json")
    assert json.loads(pulled.out)["action"] == "fast-forward"
    assert json.loads(pulled.out)["taken"] and "from the laptop" in cli("list").out
    assert cli("remote", "remove", "origin").returncode == 0


def test_parametric_memory_travels_with_history_and_merges_by_record(store, tmp_path, embedder):
    from memos_cli.store import params

    from .test_param_store import _blob, _record

    unit = store.add("Frank prefers short answers")
    desk, laptop, _ = _pair(store, tmp_path, embedder)
    first = _record("style", sources=[{"id": unit.id, "version": 1}])
    params.save(desk, first, _blob(first), check_sources=False)
    syncing.sync(desk)
    assert syncing.sync(laptop).action == "fast-forward"
    assert params.read_blob(laptop, params.get(laptop, "style"))  # the blob came with the record, checked
    # Each side learns another one, and the desk drops the first: the merge keeps both new ones, drops it.
    second, third = _record("tone"), _record("facts")
    params.save(desk, second, _blob(second, seed=1), check_sources=False)
    params.remove(desk, ["style"])
    params.save(laptop, third, _blob(third, seed=2), check_sources=False)
    syncing.sync(desk)
    assert syncing.sync(laptop).action == "merged"
    assert [r.name for r in params.records(laptop)] == ["facts", "tone"]
    for name in ("facts", "tone"):
        assert params.read_blob(laptop, params.get(laptop, name))
    report = checking.check(laptop)
    assert report.ok, [p.message for p in report.problems]


def test_a_commit_that_only_claims_a_purge_purges_nothing_here(store, tmp_path, embedder):
    unit = store.add("Gina's birthday is in May")
    desk, laptop, remote = _pair(store, tmp_path, embedder)
    # The laptop's history says it purged the unit, but still holds it.
    git(laptop.root, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m",
        f"purge: 1 unit\n\nMemos-Op: purge\nMemos-Purged: {unit.id}")
    git(laptop.root, "push", "-q", "origin", "main")
    report = syncing.sync(desk)
    assert report.purged_here == [] and report.action == "fast-forward"
    assert desk.get(unit.id).text == "Gina's birthday is in May"
    assert git(desk.root, "log", "--format=%H", "--", f"units/{unit.id[-2]}/{unit.id[-1]}/{unit.id}.json").strip()
