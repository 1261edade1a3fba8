"""Pinned units: pin and unpin, the filter, the schema-3 upgrade and the table format."""

from __future__ import annotations

import json

import pytest

from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.retrieval import Filters
from memos_cli.plaintext.table import MARKER, TABLE_FORMAT
from memos_cli.store import check as checking
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, commit_count, git, head


def _file(store: MemoryStore, uid: str) -> dict:
    return json.loads((store.root / files.unit_path(uid)).read_text())


def test_pin_and_unpin_round_trip_one_commit_each(store):
    a, b = store.add("Answer in British English"), store.add("Alice likes tea")
    n = commit_count(store.root)
    changed = store.pin([a.id, b.id[:12]])  # a unique prefix will do
    assert sorted(u.id for u in changed) == sorted([a.id, b.id])
    assert commit_count(store.root) == n + 1
    message = git(store.root, "log", "-1", "--format=%B")
    assert message.startswith("pin: 2 units") and "Memos-Op: pin" in message
    for unit in (a, b):
        now = store.get(unit.id)
        assert now.pinned and _file(store, unit.id)["pinned"] is True
        assert now.version == unit.version and now.updated_at == unit.updated_at  # placement, not content
    assert [u.id for u in store.list(Filters(pinned=True))] == [b.id, a.id]
    assert store.list(Filters(pinned=False)) == []

    assert [u.id for u in store.pin([a.id], pinned=False)] == [a.id]
    assert commit_count(store.root) == n + 2
    assert "Memos-Op: unpin" in git(store.root, "log", "-1", "--format=%B")
    assert not store.get(a.id).pinned and store.get(b.id).pinned
    assert [u.id for u in store.list(Filters(pinned=True))] == [b.id]
    assert [u.id for u in store.list(Filters(pinned=False))] == [a.id]
    assert checking.check(store).ok


def test_pin_changes_nothing_when_nothing_needs_it(store):
    a = store.add("Answer briefly", pinned=True)
    b = store.add("Bob adopted a dog")
    n, before = commit_count(store.root), head(store.root)
    assert store.pin([a.id]) == []
    assert store.pin([b.id], pinned=False) == []
    assert commit_count(store.root) == n and head(store.root) == before
    assert [u.id for u in store.pin([a.id, b.id])] == [b.id]  # the one already pinned is left alone


def test_pin_unknown_or_forgotten_ids_change_nothing(store):
    a = store.add("Answer briefly")
    gone = store.add("an old note")
    store.forget([gone.id])
    before = head(store.root)
    with pytest.raises(NotFoundError, match="no memory"):
        store.pin([a.id, "zzzzzzzzzzzzzz"])
    with pytest.raises(UsageError, match="only active memories"):
        store.pin([a.id, gone.id])
    with pytest.raises(UsageError, match="give the ids"):
        store.pin([])
    assert head(store.root) == before and not store.get(a.id).pinned
    assert git(store.root, "status", "--porcelain") == ""


def test_add_and_import_may_pin(store):
    unit = store.add("Answer briefly", pinned=True)
    assert store.get(unit.id).pinned and _file(store, unit.id)["pinned"] is True
    units = store.import_records([(1, {"text": "pinned", "pinned": True}), (2, {"text": "not pinned"})])
    assert [u.pinned for u in units] == [True, False]
    with pytest.raises(UsageError, match="line 1: bad pinned"):
        store.import_records([(1, {"text": "x", "pinned": "yes"})])


def test_recall_filters_on_pinned(store):
    store.add("Alice drinks green tea every morning", pinned=True)
    store.add("Bob drinks black tea at night")
    pinned = store.recall("who drinks tea", 5, Filters(pinned=True))
    assert [h.unit.text for h in pinned] == ["Alice drinks green tea every morning"] and pinned[0].unit.pinned
    assert [h.unit.text for h in store.recall("who drinks tea", 5, Filters(pinned=False))] == [
        "Bob drinks black tea at night"]


def test_check_compares_pinned_and_repair_fixes_the_table(store):
    unit = store.add("Answer briefly")
    store.pin([unit.id])
    row = store._units_by_id([unit.id])[0]
    row.pinned = False
    store.table.upsert([row])  # the table now disagrees with the file
    report = checking.check(store)
    assert any(p.area == "table" and "different from their files" in p.message for p in report.problems)
    assert checking.check(store, repair=True).ok
    assert store.get(unit.id).pinned


def test_rollback_restores_pinning(store):
    unit = store.add("Answer briefly")
    before = head(store.root)
    store.pin([unit.id])
    store.rollback(before)
    assert not store.get(unit.id).pinned


def _count_embeddings(store: MemoryStore, monkeypatch) -> list[int]:
    embedded: list[int] = []
    real = store.embed

    def counting(units, progress=None):
        embedded.append(len(units))
        real(units, progress)

    monkeypatch.setattr(store, "embed", counting)
    return embedded


def test_a_schema_2_store_is_upgraded_to_3(store, monkeypatch):
    units = [store.add(f"old memory {i}") for i in range(3)]
    root = store.root
    # Make it a schema-2 store: its settings, and a marker without a table format.
    cfg = root / "memos.toml"
    cfg.write_text(cfg.read_text().replace("schema_version = 3", "schema_version = 2"))
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "schema 2")
    marker = json.loads((root / "tables" / MARKER).read_text())
    (root / "tables" / MARKER).write_text(json.dumps({"head": head(root), "version": marker["version"]}))
    n = commit_count(root)

    old = MemoryStore(root, embedder=store.embedder)
    embedded = _count_embeddings(old, monkeypatch)
    assert sorted(u.id for u in old.list(limit=0)) == sorted(u.id for u in units)
    assert any("upgraded the store from schema 2 to schema 3" in n for n in old.notices)
    assert any("rebuilt the search table in its new format from 3 unit files" in n for n in old.notices)
    assert sum(embedded) == 0  # the vectors were reused
    assert commit_count(root) == n + 1
    message = git(root, "log", "-1", "--format=%B")
    assert message.startswith("upgrade: schema 2 -> 3") and "Memos-Op: upgrade" in message
    assert git(root, "show", "--format=", "--name-only", "HEAD").split() == ["memos.toml"]
    assert "schema_version = 3" in cfg.read_text()
    assert "pinned" in old.table.ds.schema.names
    assert json.loads((root / "tables" / MARKER).read_text())["format"] == TABLE_FORMAT
    assert old.pin([units[0].id]) and old.get(units[0].id).pinned
    assert checking.check(old).ok


def _older_format(store) -> MemoryStore:
    """The store with its table as the previous memos made it: no pinned column, no format in its marker."""
    import lancedb

    root = store.root
    data = store.table.select(None).drop_columns(["pinned"])
    store.table.drop()
    lancedb.connect(str(root / "tables")).create_table("units", data=data)
    (root / "tables" / MARKER).write_text(json.dumps({"head": head(root), "version": 1}))
    return MemoryStore(root, embedder=store.embedder)


def test_a_table_of_the_older_format_is_rebuilt(store, monkeypatch):
    units = [store.add(f"memory {i}") for i in range(3)]
    root = store.root
    old = _older_format(store)
    assert "pinned" not in old.table.ds.schema.names
    embedded = _count_embeddings(old, monkeypatch)
    n = commit_count(root)
    assert sorted(u.id for u in old.list(limit=0)) == sorted(u.id for u in units)
    assert any("rebuilt the search table in its new format" in n for n in old.notices)
    assert sum(embedded) == 0 and commit_count(root) == n  # vectors reused; a rebuild commits nothing
    assert "pinned" in old.table.ds.schema.names
    assert json.loads((root / "tables" / MARKER).read_text())["format"] == TABLE_FORMAT
    assert checking.check(old).ok


def test_an_older_format_table_is_rebuilt_before_a_write(store):
    unit = store.add("memory")
    old = _older_format(store)
    old.pin([unit.id])
    assert old.get(unit.id).pinned and checking.check(old).ok


# ---- the command line ---------------------------------------------------------------


@pytest.fixture
def three(cli, tmp_path):
    ids = []
    for args in (["Alice lives in Lisbon"], ["Answer in British English", "--pin"], ["Bob adopted a dog"]):
        done = cli("add", *args)
        assert done.returncode == 0, done.err
        ids.append(done.out.strip())
    return tmp_path / "store", ids


@pytest.mark.slow
def test_cli_pin_unpin_and_list(cli, three):
    root, (alice, style, bob) = three
    assert [u["id"] for u in json.loads(cli("list", "--pinned", "--json").out)] == [style]
    assert [u["id"] for u in json.loads(cli("list", "--unpinned", "--json").out)] == [bob, alice]
    n = commit_count(root)
    done = cli("pin", alice, bob)
    assert done.returncode == 0 and done.out.strip() == "pinned 2 memories", done.err
    assert commit_count(root) == n + 1
    done = cli("pin", alice, "--json")
    assert json.loads(done.out) == {"pinned": [], "commit": None}
    assert cli("pin", alice).out.strip().startswith("nothing to change")
    assert commit_count(root) == n + 1
    done = cli("unpin", bob, "--json")
    assert json.loads(done.out) == {"unpinned": [bob], "commit": head(root)}
    assert sorted(u["id"] for u in json.loads(cli("list", "--pinned", "--json").out)) == sorted([alice, style])
    shown = json.loads(cli("show", style, "--json").out)
    assert shown["pinned"] is True and shown["version"] == 1
    assert "pinned" in cli("show", style).out
    assert cli("recall", "British", "--pinned", "--json").returncode == 0


@pytest.mark.slow
def test_cli_pin_bad_input_fails_cleanly(cli, three):
    root, (alice, _, _) = three
    before = head(root)
    assert_clean_failure(cli("pin", alice, "zzzzzzzzzzzzzz"), root, before, "no memory with id")
    assert_clean_failure(cli("unpin", "zz"), root, before, "no memory with id")
    assert_clean_failure(cli("pin"), root, before, "missing argument")
    assert_clean_failure(cli("import", "-", input='{"text": "x", "pinned": "yes"}\n'), root, before,
                         "line 1: bad pinned")


@pytest.mark.slow
def test_cli_import_pinned(cli, tmp_path):
    lines = [{"text": "Answer briefly", "pinned": True}, {"text": "Alice likes tea"}]
    done = cli("import", "-", input="".join(json.dumps(x) + "\n" for x in lines))
    assert done.returncode == 0, done.err
    assert [u["text"] for u in json.loads(cli("list", "--pinned", "--json").out)] == ["Answer briefly"]
