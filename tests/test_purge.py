"""Purge: the text leaves the store, its table and every object of git history."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from memos_cli.core import check as checking
from memos_cli.core import history
from memos_cli.core.errors import NotFoundError
from memos_cli.core.purge import purge

from .conftest import assert_clean_failure, commit_count, git, head

SECRET = "hunter2-Zebra-Quokka-7781"


def _objects(root: Path) -> bytes:
    """The content of every object in the repository, reachable or not, loose or packed."""
    return subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=root, capture_output=True,
                          check=True).stdout


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_purge_removes_the_text_from_every_object_and_file(store):
    keep = store.add("Alice lives in Lisbon")
    leak = store.add(f"the server password is {SECRET}", tags=["ops"])
    store.recall("server password", 1)  # an access count, folded into the next commit
    store.edit(leak.id, {"text": f"the server password is {SECRET} (rotated soon)"})
    store.forget([leak.id])
    store.add("another memory after the leak")
    store.compact()
    assert SECRET.encode() in _objects(store.root)
    commits = commit_count(store.root)

    report = purge(store, [leak.id])
    assert report.ids == [leak.id] and report.commits_rewritten >= 3 and report.blobs_removed >= 3
    assert SECRET.encode() not in _objects(store.root)
    assert _files_holding(store.root, SECRET.encode()) == []
    assert _files_holding(store.root, b"hunter2") == []
    assert git(store.root, "reflog", "--all") == "" or SECRET not in git(store.root, "reflog", "--all")
    # Everything else is as it was; history keeps its shape, plus the purge.
    assert commit_count(store.root) == commits + 1
    assert history.log(store, 1)[0].op == "purge"
    assert [u.id for u in store.list(limit=0)] == [u.id for u in store.list(limit=0) if u.id != leak.id]
    assert keep.id in [u.id for u in store.list(limit=0)]
    assert store.recall("server password", 5) == [] or all(h.unit.id != leak.id for h in store.recall("password", 5))
    with pytest.raises(NotFoundError):
        store.get(leak.id)
    assert checking.check(store).ok
    store.add("life goes on")
    assert checking.check(store).ok


def test_purge_of_an_id_only_in_history_needs_in_history(store):
    store.add("kept")
    target = head(store.root)
    gone = store.add(f"rolled back secret {SECRET}")
    store.rollback(target)
    before = head(store.root)
    with pytest.raises(NotFoundError, match="only in its history"):
        purge(store, [gone.id])
    with pytest.raises(NotFoundError, match="no memory"):
        purge(store, ["0000000000zzzz"])
    assert head(store.root) == before
    report = purge(store, [gone.id], in_history=True)
    assert report.in_store == []
    assert SECRET.encode() not in _objects(store.root)
    assert checking.check(store).ok


def test_cli_purge(cli, tmp_path):
    root = tmp_path / "store"
    done = cli("add", f"token {SECRET}")
    uid = done.out.strip()
    cli("add", "harmless")
    before = head(root)
    assert_clean_failure(cli("purge", uid), root, before, "--yes")
    assert_clean_failure(cli("purge", "zzzz9999", "--yes"), root, before, "no memory")
    done = cli("purge", uid, "--yes", "--json")
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    assert out["purged"] == [uid] and out["commits_rewritten"] == 2  # the add and the purge
    assert SECRET.encode() not in _objects(root)
    assert json.loads(cli("check", "--json").out)["ok"] is True
