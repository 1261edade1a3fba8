"""Versioned memory: edit, forget, rollback, log, diff, show --history, check, and the table kept in step."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from memos_cli.errors import NotFoundError, StoreError, UsageError
from memos_cli.plaintext import files
from memos_cli.store import check as checking
from memos_cli.store import history
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, commit_count, git, head


def _texts(hits):
    return [h.unit.text for h in hits]


def test_each_unit_is_a_json_file_in_git_and_the_table_is_not(store):
    unit = store.add("Alice lives in Lisbon", kind="fact", tags=["alice"])
    tracked = git(store.root, "ls-files").split()
    assert files.unit_path(unit.id) in tracked
    assert not any(p.startswith("tables/") for p in tracked)
    data = json.loads((store.root / files.unit_path(unit.id)).read_text())
    assert data["text"] == "Alice lives in Lisbon" and "vector" not in data and data["version"] == 1


def test_edit_makes_a_new_version_reembeds_and_keeps_the_old_one(store):
    unit = store.add("Alice lives in Lisbon", kind="fact", tags=["alice"])
    store.add("Bob collects stamps")
    edited = store.edit(unit.id, {"text": "Alice moved to Porto", "tags": ["alice", "moved"]})
    assert edited is not None and edited.version == 2
    assert store.get(unit.id).text == "Alice moved to Porto"
    assert _texts(store.recall("Porto", 1)) == ["Alice moved to Porto"]  # the new text is searchable
    assert "Lisbon" not in " ".join(_texts(store.recall("Lisbon", 5)))
    versions = history.unit_versions(store, unit.id)
    assert [v.unit.text for v in versions if v.unit] == ["Alice lives in Lisbon", "Alice moved to Porto"]
    assert "text" in versions[-1].fields
    change = history.diff(store)
    assert [c.change for c in change.changes] == ["changed"]
    assert {"text", "tags", "version"} <= set(change.changes[0].fields)
    assert "-Alice lives in Lisbon" in change.changes[0].text_diff()
    assert store.edit(unit.id, {"text": "Alice moved to Porto"}) is None  # no change, no commit


def test_edit_refuses_a_unit_changed_meanwhile(store):
    unit = store.add("first text")
    store.edit(unit.id, {"text": "second text"})
    before = head(store.root)
    with pytest.raises(StoreError, match="changed while you edited"):
        store.edit(unit.id, {"text": "third text"}, expect_version=1)
    assert head(store.root) == before


def test_forget_hides_from_recall_keeps_history_and_rollback_undoes_it(store):
    keep = store.add("The cat is called Miso")
    gone = store.add("The wifi password is on the fridge")
    before_forget = head(store.root)
    store.forget([gone.id])
    assert store.get(gone.id).status == "deleted"
    assert gone.id not in [h.unit.id for h in store.recall("wifi password", 5)]
    assert [v.unit.status for v in history.unit_versions(store, gone.id)] == ["active", "deleted"]
    assert store.forget([gone.id]) == []  # already forgotten
    n = commit_count(store.root)
    store.rollback(before_forget)
    assert commit_count(store.root) == n + 1  # a new commit; history kept
    assert store.get(gone.id).status == "active"
    assert gone.id in [h.unit.id for h in store.recall("wifi password", 5)]
    assert store.get(keep.id).text == "The cat is called Miso"
    assert checking.check(store).ok


def test_rollback_removes_units_added_since_and_restores_old_text(store):
    a = store.add("version one of a")
    target = head(store.root)
    store.edit(a.id, {"text": "version two of a"})
    b = store.add("added later")
    result = store.rollback(target)
    assert result["removed"] == [b.id]
    assert store.get(a.id).text == "version one of a"
    with pytest.raises(NotFoundError):
        store.get(b.id)
    assert not (store.root / files.unit_path(b.id)).exists()
    assert _texts(store.recall("version", 5)) == ["version one of a"]
    # the removed unit is still in history
    assert [v.unit.text if v.unit else None for v in history.unit_versions(store, b.id)] == ["added later", None]


def test_rollback_and_diff_refuse_revisions_not_in_history(store, tmp_path):
    store.add("something")
    other = MemoryStore(tmp_path / "other", embedder=store.embedder)
    other.add("elsewhere")
    foreign = head(other.root)
    before = head(store.root)
    with pytest.raises(NotFoundError, match="no commit"):
        store.rollback("0123456789abcdef")
    with pytest.raises(NotFoundError):
        store.rollback(foreign)  # a commit of another repository
    with pytest.raises(UsageError):
        store.rollback("--all")
    with pytest.raises(NotFoundError):
        history.diff(store, "nope")
    assert head(store.root) == before


def test_log_filters_by_cube_and_user(store):
    store.add("work thing", cube="work", user="ana")
    store.add("home thing", cube="home", user="ben")
    store.add("other work thing", cube="work", user="ben")
    ops = history.log(store)
    assert [c.op for c in ops] == ["add", "add", "add", "init"]
    assert ops[0].to_json()["units"] == 1
    assert len(history.log(store, 2)) == 2
    assert [c.to_json()["user"] for c in history.log(store, cube="work")] == ["ben", "ana"]
    assert [c.to_json()["cube"] for c in history.log(store, user="ben")] == ["work", "home"]
    assert history.log(store, cube="work", user="ana", n=5)[0].to_json()["cube"] == "work"


def test_access_counts_fold_into_unit_files_as_usage_changes(store):
    unit = store.add("Miso likes tuna")
    store.recall("tuna", 1)
    store.add("a later write folds the count in")
    assert json.loads((store.root / files.unit_path(unit.id)).read_text())["access_count"] == 1
    change = history.diff(store)
    used = [c for c in change.changes if c.id == unit.id]
    assert used and used[0].usage_only
    assert change.to_json()["usage_updated"] == 1 and change.to_json()["changed"] == 0


def test_the_table_follows_head_when_git_moves_it(store):
    a = store.add("first memory about apples")
    store.add("second memory about bananas")
    # Outside memos: the user resets the repository by hand.
    git(store.root, "reset", "-q", "--hard", "HEAD~1")
    fresh = MemoryStore(store.root, embedder=store.embedder)
    assert [u.id for u in fresh.list(limit=0)] == [a.id]
    assert any("brought the search table up to date" in n for n in fresh.notices)
    assert checking.check(fresh).ok


def test_a_clone_rebuilds_its_table_from_the_files(store, tmp_path):
    store.add("Alice lives in Lisbon")
    store.add("Bob plays chess")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(store.root), str(clone)], check=True)
    copy = MemoryStore(clone, embedder=store.embedder)
    assert _texts(copy.recall("chess", 1)) == ["Bob plays chess"]
    assert any("rebuilt the search table from 2 unit files" in n for n in copy.notices)


def test_check_finds_and_repairs_a_broken_table(store):
    for i in range(5):
        store.add(f"memory number {i}")
    assert checking.check(store).ok
    shutil.rmtree(store.root / "tables" / "units.lance")
    fresh = MemoryStore(store.root, embedder=store.embedder)
    report = checking.check(fresh)
    assert not report.ok and any(p.area == "table" for p in report.problems)
    repaired = checking.check(fresh, repair=True)
    assert repaired.ok and repaired.repaired
    assert len(fresh.list(limit=0)) == 5


def test_check_finds_wrong_embeddings_and_repairs_them(store):
    unit = store.add("a memory with a damaged vector")
    broken = store.get(unit.id)
    store.table.upsert([broken.__class__(**{**broken.__dict__, "vector": [0.0] * store.embedder.dim})])
    report = checking.check(store)
    assert any(p.area == "embeddings" and "zero" in p.message for p in report.problems)
    assert checking.check(store, repair=True).ok
    assert checking.check(store).ok


def test_check_reports_hand_edits_without_discarding_them(store):
    unit = store.add("original")
    path = store.root / files.unit_path(unit.id)
    path.write_text(path.read_text().replace("original", "edited by hand"))
    report = checking.check(store, repair=True)
    assert not report.ok
    assert any(p.area == "git" and "uncommitted" in p.message and not p.fixable for p in report.problems)
    assert "edited by hand" in path.read_text()


def test_a_schema_1_store_is_upgraded(store):
    units = [store.add(f"old memory {i}") for i in range(3)]
    # Make it look like schema 1: the LanceDB table in git, no unit files.
    root = store.root
    git(root, "rm", "-r", "-q", "--cached", "units", ".gitignore")
    shutil.rmtree(root / "units")
    (root / ".gitignore").unlink()
    (root / "tables" / "synced.json").unlink()
    cfg = root / "memos.toml"
    cfg.write_text(cfg.read_text().replace("schema_version = 3", "schema_version = 1"))
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "schema 1")
    assert any(p.startswith("tables/") for p in git(root, "ls-files").split())
    old = MemoryStore(root, embedder=store.embedder)
    assert sorted(u.id for u in old.list(limit=0)) == sorted(u.id for u in units)
    assert any("upgraded the store from schema 1 to schema 3" in n for n in old.notices)
    tracked = git(root, "ls-files").split()
    assert not any(p.startswith("tables/") for p in tracked)
    assert all(files.unit_path(u.id) in tracked for u in units)
    assert checking.check(old).ok


# ---- the command line ---------------------------------------------------------------


@pytest.fixture
def two(cli, tmp_path):
    for text in ("Alice lives in Lisbon", "Bob adopted a dog named Pixel"):
        done = cli("add", text, "--tag", text.split()[0].lower())
        assert done.returncode == 0, done.err
    listing = json.loads(cli("list", "--json").out)
    return tmp_path / "store", {u["text"].split()[0]: u["id"] for u in listing}


def _editor(tmp_path: Path, body: str) -> dict[str, str]:
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"EDITOR": str(script), "VISUAL": ""}


def test_cli_edit_in_the_editor(cli, two, tmp_path):
    root, ids = two
    env = _editor(tmp_path, "sed -i -e 's/Lisbon/Porto/' -e 's/^importance = .*/importance = 0.9/' \"$1\"")
    done = cli("edit", ids["Alice"], env=env)
    assert done.returncode == 0, done.err
    shown = json.loads(cli("show", ids["Alice"], "--json").out)
    assert shown["text"] == "Alice lives in Porto" and shown["importance"] == 0.9 and shown["version"] == 2
    versions = json.loads(cli("show", ids["Alice"], "--history", "--json").out)
    assert [v["unit"]["text"] for v in versions] == ["Alice lives in Lisbon", "Alice lives in Porto"]


def test_cli_edit_bad_editor_sessions_change_nothing(cli, two, tmp_path):
    root, ids = two
    before = head(root)
    cases = [
        ("exit 3", "exited with status 3"),
        ("sed -i 's/^importance = .*/importance = \"lots\"/' \"$1\"", "importance"),
        ("sed -i 's/^tags = /tags == /' \"$1\"", "not valid TOML"),
        ("sed -i 's/^+++$/---/' \"$1\"", "no '+++' line"),
        ("printf 'kind = \"fact\"\\n+++\\n   \\n' > \"$1\"", "text is empty"),
    ]
    for body, message in cases:
        assert_clean_failure(cli("edit", ids["Alice"], env=_editor(tmp_path, body)), root, before, message)
    done = cli("edit", ids["Alice"], env=_editor(tmp_path, ": > \"$1\""))  # emptied: cancelled
    assert done.returncode == 0 and "cancelled" in done.err
    assert head(root) == before


def test_cli_edit_with_flags_and_bad_ids(cli, two):
    root, ids = two
    done = cli("edit", ids["Bob"], "--text", "Bob adopted a cat named Pixel", "--tag", "pets", "--meta", "src=chat",
               "--json")
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    assert out["changed"] and out["unit"]["tags"] == ["bob", "pets"] and out["unit"]["meta"] == {"src": "chat"}
    before = head(root)
    assert_clean_failure(cli("edit", "zzzzzzzzzzzzzz", "--text", "x"), root, before, "no memory")
    assert_clean_failure(cli("edit", ids["Bob"], "--text", " "), root, before, "empty")
    assert_clean_failure(cli("show", "zzzzzzzzzzzzzz", "--history"), root, before, "no memory")


def test_cli_forget_where_asks_and_log_diff_rollback(cli, two):
    root, ids = two
    before = head(root)
    assert_clean_failure(cli("forget", "--where", "--tag", "alice"), root, before, "--yes")
    assert_clean_failure(cli("forget", "--where"), root, before, "at least one filter")
    assert_clean_failure(cli("forget", "--tag", "alice"), root, before, "--where")
    assert_clean_failure(cli("forget", "zzzz1234"), root, before, "no memory")
    done = cli("forget", "--where", "--tag", "alice", "--yes", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["forgotten"] == [ids["Alice"]]
    log = json.loads(cli("log", "-n", "1", "--json").out)
    assert log[0]["op"] == "forget" and log[0]["units"] == 1 and log[0]["user"] == "tester"
    change = json.loads(cli("diff", "--json").out)
    assert change["changed"] == 1 and change["units"][0]["fields"]["status"] == {"old": "active", "new": "deleted"}
    assert "+ " + ids["Bob"] in cli("diff", "HEAD~2", "HEAD").out
    after_forget = head(root)
    for args, message in ((["rollback", "nope"], "no commit"), (["diff", "HEAD~99"], "no commit"),
                          (["diff", "a", "b", "c"], "at most two"), (["log", "-n", "0"], "-n")):
        assert_clean_failure(cli(*args), root, after_forget, message)
    done = cli("rollback", "HEAD~1", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(cli("show", ids["Alice"], "--json").out)["status"] == "active"
    assert json.loads(cli("check", "--json").out)["ok"] is True


def test_cli_check_exits_non_zero_on_problems(cli, two):
    root, _ = two
    shutil.rmtree(root / "tables")
    done = cli("check", "--json")
    assert done.returncode == 1, done.err
    assert any("missing" in p["message"] for p in json.loads(done.out)["problems"])
    done = cli("check", "--repair")
    assert done.returncode == 0 and "rebuilt the search table from 2 unit files" in done.out, done.out + done.err
    (root / "units" / "zz").mkdir(parents=True, exist_ok=True)
    (root / "units" / "zz" / "stray.json").write_text("{}")
    done = cli("check")
    assert done.returncode == 1 and "uncommitted" in done.out


def test_a_failed_write_undoes_only_its_own_files(store):
    kept = store.add("edited by hand, not committed")
    path = store.root / files.unit_path(kept.id)
    path.write_text(path.read_text().replace("edited by hand", "EDITED BY HAND"))
    before = head(store.root)
    with pytest.raises(RuntimeError):
        with store.transaction("add") as txn:
            unit = store.get(kept.id)
            store.save(txn, [unit.__class__(**{**unit.__dict__, "id": "0000000000abcd", "text": "half-written"})])
            raise RuntimeError("boom")
    assert head(store.root) == before
    assert not (store.root / files.unit_path("0000000000abcd")).exists()
    assert "EDITED BY HAND" in path.read_text()  # the hand edit is still there


def test_recovery_and_check_remove_temporary_unit_files(store):
    unit = store.add("a memory")
    stray = store.root / files.temp_path(files.unit_path("0000000000abcd"))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("{")  # as a write killed between writing a file's bytes and renaming them leaves it
    report = checking.check(store)
    assert not report.ok and any("temporary unit files" in p.message and p.fixable for p in report.problems)
    assert checking.check(store, repair=True).ok and not stray.exists()
    assert store.get(unit.id).text == "a memory"


def test_cli_edit_without_a_terminal_or_editor(cli, two):
    root, ids = two
    before = head(root)
    done = cli("edit", ids["Alice"], env={"EDITOR": "", "VISUAL": ""})
    assert_clean_failure(done, root, before, "no terminal")
