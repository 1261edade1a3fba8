"""Export and import of memos's own formats: JSON lines, Markdown, packs; round trips and bad input."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from memos_cli.errors import UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.merge import merge2, merge3
from memos_cli.plaintext.retrieval import Filters
from memos_cli.portable import export as exporting
from memos_cli.portable import jsonl, markdown, pack
from memos_cli.portable.sources import detect, open_source
from memos_cli.store import check as checking
from memos_cli.store import params
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, commit_count, git, head
from .test_param_store import _blob, _record


def _filled(store: MemoryStore) -> list[str]:
    """Units with every kind of field: tags, meta, sources, a pin, versions, a ttl, other cubes and states."""
    a = store.add("Alice moved to Lisbon in March 2023", kind="fact", tags=["alice", "moves"],
                  meta={"city": "Lisbon", "n": 3, "nested": {"x": [1, 2.5, None]}}, time="2023-03-14",
                  sources=[{"file": "notes.txt", "line": 4}], importance=0.8)
    b = store.add("  indented text with a trailing blank line\n\n", tags=["odd"], cube="work", ttl="30d")
    c = store.add("---\ntitle: not front matter\n---\nkey: value, and a colon: here", kind="note")
    d = store.add("déjà vu: 東京 and emoji 🎉", user="bob")
    store.pin([a.id])
    store.edit(c.id, {"text": "---\ntitle: still not front matter\n---\nsecond version", "tags": ["v2"]})
    store.recall("Lisbon", 3)  # an access count, folded into the next write
    store.forget([d.id])
    store.add("archived later", kind="episode", time="2024-01-01T10:00:00Z")
    return [a.id, b.id, c.id, d.id]


def _files_at_head(store: MemoryStore) -> dict[str, bytes]:
    paths = store.repo.files("HEAD", files.UNITS_DIR)
    return {spec.split(":", 1)[1]: data for spec, data in store.repo.cat(f"HEAD:{p}" for p in paths)}


def _new_store(tmp_path: Path, name: str, embedder) -> MemoryStore:
    return MemoryStore(tmp_path / name, embedder=embedder)


@pytest.mark.parametrize("fmt", ["jsonl", "markdown", "pack"])
def test_an_export_imported_into_an_empty_store_gives_the_same_units(fmt, store, tmp_path, embedder):
    _filled(store)
    dest = tmp_path / {"jsonl": "out.jsonl", "markdown": "md", "pack": "out.pack"}[fmt]
    result = exporting.export(store, Filters(status=None), fmt, str(dest))
    assert result["units"] == 5
    assert detect(str(dest)) == ("pack" if fmt == "pack" else "memos")

    other = _new_store(tmp_path, "other", embedder)
    src = open_source(str(dest))
    done = other.import_units(src.units, where=src.wheres, parametric=src.parametric)
    assert len(done["added"]) == 5 and done["updated"] == [] and done["commit"]
    # The same unit files, byte for byte: ids, times, versions, tags, meta, sources, pins, states.
    assert _files_at_head(other) == _files_at_head(store)
    assert checking.check(other).ok
    # Importing it again changes nothing: no commit.
    commits = commit_count(other.root)
    again = other.import_units(open_source(str(dest)).units)
    assert again["added"] == [] and again["updated"] == [] and again["unchanged"] == 5 and again["commit"] is None
    assert commit_count(other.root) == commits
    # The other store recalls what it imported.
    assert other.recall("where does Alice live", 1)[0].unit.text.startswith("Alice moved to Lisbon")


def test_a_pack_carries_vectors_and_parametric_memory_and_embeds_nothing(store, tmp_path, embedder):
    ids = _filled(store)
    record = _record("style", sources=[{"id": ids[0], "version": 1}])
    params.save(store, record, _blob(record), check_sources=False)
    dest = tmp_path / "all.pack"
    manifest = exporting.export(store, Filters(status=None), "pack", str(dest))
    assert manifest["params"] == 1 and manifest["vectors"]

    class Counting:  # the real model, counting the texts it is asked to embed
        def __init__(self) -> None:
            self.texts = 0

        def __getattr__(self, name):
            return getattr(embedder, name)

        def embed(self, texts, *args, **kwargs):
            self.texts += len(texts)
            return embedder.embed(texts, *args, **kwargs)

    counting = Counting()
    other = MemoryStore(tmp_path / "other", embedder=counting)
    got = pack.read(dest)
    result = other.import_units(got.units, where=got.wheres, parametric=got.parametric)
    assert counting.texts == 0
    assert result["params"] == ["style"]
    assert [r.name for r in params.records(other)] == ["style"]
    assert params.read_blob(other, params.get(other, "style")) == params.read_blob(store, params.get(store, "style"))
    assert checking.check(other).ok
    # Same pack twice: nothing changes.
    commits = commit_count(other.root)
    assert other.import_units(pack.read(dest).units, parametric=pack.read(dest).parametric)["commit"] is None
    assert commit_count(other.root) == commits


def test_import_by_id_merges_with_what_the_store_has(store, tmp_path, embedder):
    unit = store.add("Bob likes tea", tags=["bob"], meta={"a": 1})
    dest = tmp_path / "old.jsonl"
    exporting.export(store, Filters(), "jsonl", str(dest))
    store.edit(unit.id, {"text": "Bob likes green tea", "tags": ["bob", "drinks"], "meta": {"a": 1, "b": 2}})
    old = open_source(str(dest))
    result = store.import_units(old.units)  # the older version: the store's newer fields stay
    assert result == {"added": [], "updated": [], "unchanged": 1, "params": [], "commit": None}
    now = store.get(unit.id)
    assert now.text == "Bob likes green tea" and now.tags == ["bob", "drinks"] and now.meta == {"a": 1, "b": 2}


def test_merge_functions_field_by_field(store):
    base = store.add("the base text", tags=["x", "y"], meta={"k": 1, "gone": 0})
    ours = store.get(base.id)
    theirs = store.get(base.id)
    ours.tags, ours.meta, ours.access_count = ["x", "y", "mine"], {"k": 1}, 3  # removed "gone" here
    theirs.tags, theirs.meta, theirs.access_count = ["y", "theirs"], {"k": 1, "gone": 0, "new": True}, 5  # dropped x
    theirs.text, theirs.version = "the remote's text", 2
    merged, conflict = merge3(base, ours, theirs)
    assert merged.tags == ["y", "mine", "theirs"]
    assert merged.meta == {"k": 1, "new": True}
    assert merged.access_count == 8 and merged.text == "the remote's text" and conflict is None
    # Both changed the text: the later change wins, the other is reported.
    ours.text, theirs.text = "mine, later", "theirs, earlier"
    ours.updated_at = theirs.updated_at.replace(year=theirs.updated_at.year + 1)
    merged, conflict = merge3(base, ours, theirs)
    assert merged.text == "mine, later" and conflict.kept == "here" and conflict.other_text == "theirs, earlier"
    # Forgotten on one side, edited on the other: stays forgotten, with the edit.
    ours.text, ours.status = base.text, "deleted"
    merged, conflict = merge3(base, ours, theirs)
    assert merged.status == "deleted" and merged.text == "theirs, earlier" and "forgotten" in conflict.reason
    # ... also when the other side changed the status otherwise, later: a forget wins over an archive.
    archived = store.get(base.id)
    archived.status, archived.updated_at = "archived", ours.updated_at.replace(year=ours.updated_at.year + 1)
    merged, conflict = merge3(base, ours, archived)
    assert merged.status == "deleted"
    # Import's two-way merge: the newer side's fields, tags united, counts not added up.
    newer = merge2(store.get(base.id), ours)
    assert newer.status == "deleted" and newer.access_count == 3


def test_export_filters_and_formats_from_the_cli(store, cli, tmp_path):
    _filled(store)
    done = cli("export", "--cube", "work")
    assert done.returncode == 0, done.err
    lines = done.out.splitlines()
    assert json.loads(lines[0])["memos_export"] == 1 and json.loads(lines[0])["units"] == 1
    assert [json.loads(x)["cube"] for x in lines[1:]] == ["work"]
    active = cli("export", "--status", "active", "-o", str(tmp_path / "a.jsonl"), "--json")
    assert active.returncode == 0 and json.loads(active.out)["units"] == 4
    md = cli("export", "--format", "markdown", "-o", str(tmp_path / "md"), "--kind", "fact")
    assert md.returncode == 0, md.err
    (only,) = list((tmp_path / "md").glob("*.md"))
    assert only.name.endswith("-alice-moved-to-lisbon-in-march-2023.md")
    text = only.read_text()
    assert text.startswith("---\nmemos_export: 1\n") and text.rstrip().endswith("Alice moved to Lisbon in March 2023")
    # An import of that folder through the CLI into a new store.
    new = cli("import", str(tmp_path / "md"), "--json", store=tmp_path / "new")
    assert new.returncode == 0, new.err
    assert json.loads(new.out)["format"] == "memos" and json.loads(new.out)["added"] == 1
    # An export piped into an import on stdin.
    piped = cli("import", "-", "--json", input=done.out, store=tmp_path / "piped")
    assert piped.returncode == 0, piped.err
    assert json.loads(piped.out)["format"] == "memos" and json.loads(piped.out)["added"] == 1


def test_bad_exports_and_packs_are_refused_and_change_nothing(store, cli, tmp_path):
    _filled(store)
    root, before = store.root, head(store.root)
    good = tmp_path / "good.pack"
    exporting.export(store, Filters(status=None), "pack", str(good))

    # A member changed after the manifest was written: its checksum no longer matches.
    bad = tmp_path / "bad.pack"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "units.jsonl":
                data = data.replace(b"Lisbon", b"Lisbom")
            zout.writestr(item, data)
    assert_clean_failure(cli("import", str(bad)), root, before, "does not match its checksum")

    # A pack from a newer memos.
    newer = tmp_path / "newer.pack"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(newer, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = json.dumps({**json.loads(data), "memos_pack": 99}).encode()
            zout.writestr(item, data)
    assert_clean_failure(cli("import", str(newer)), root, before, "newer memos")

    # A truncated file that is not a zip at all past its magic, and a JSON-lines export from a newer schema.
    (tmp_path / "cut.pack").write_bytes(good.read_bytes()[:200])
    assert_clean_failure(cli("import", str(tmp_path / "cut.pack")), root, before, "not a readable memos pack")
    out = io.StringIO()
    jsonl.write(out, [], 0)
    header = json.loads(out.getvalue())
    (tmp_path / "newer.jsonl").write_text(json.dumps({**header, "store_schema": 99}) + "\n")
    assert_clean_failure(cli("import", str(tmp_path / "newer.jsonl")), root, before, "newer memos")
    # An export cut short: its header counts more units than it holds.
    exporting.export(store, Filters(status=None), "jsonl", str(tmp_path / "full.jsonl"))
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert_clean_failure(cli("import", str(tmp_path / "short.jsonl")), root, before, "cut short")
    # A bad unit line is named by its line.
    broken = lines[:2] + [lines[2].replace('"version": ', '"version": -')] + lines[3:]
    (tmp_path / "broken.jsonl").write_text("\n".join(broken) + "\n")
    assert_clean_failure(cli("import", str(tmp_path / "broken.jsonl")), root, before, "broken.jsonl: line 3")
    # A file that is nothing memos reads, and a named format that does not fit.
    (tmp_path / "random.bin").write_bytes(b"\x00\x01 not a memory file")
    assert_clean_failure(cli("import", str(tmp_path / "random.bin")), root, before, "not a format memos imports")
    assert_clean_failure(cli("import", str(good), "--from", "nonsense"), root, before, "bad --from")
    # Export's own bad input.
    assert_clean_failure(cli("export", "--format", "markdown"), root, before, "-o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.md").write_text("hello")
    assert_clean_failure(cli("export", "--format", "markdown", "-o", str(tmp_path / "full")), root, before,
                         "already holds")
    assert git(root, "status", "--porcelain") == ""


def test_markdown_export_reads_in_an_editor_and_comes_back_after_a_hand_edit(store, tmp_path, embedder):
    unit = store.add("Carol plays chess on Sundays", tags=["carol"])
    folder = tmp_path / "md"
    markdown.write(folder, exporting.select(store, Filters()))
    (path,) = folder.glob("*.md")
    path.write_text(path.read_text().replace("on Sundays", "on Saturdays").replace("version: 1", "version: 2")
                    .replace(f"updated_at: '{path.read_text().split('updated_at: ')[1][1:28]}'",
                             "updated_at: '2099-01-01T00:00:00Z'"))
    src = open_source(str(folder))
    result = store.import_units(src.units, where=src.wheres)
    assert result["updated"] == [unit.id]
    assert store.get(unit.id).text == "Carol plays chess on Saturdays"


def test_an_imported_export_is_screened_by_the_privacy_guard(store, tmp_path, embedder):
    store.add("the deploy key is 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", privacy={"*": "allow"})
    dest = tmp_path / "leak.jsonl"
    exporting.export(store, Filters(), "jsonl", str(dest))
    other = _new_store(tmp_path, "other", embedder)
    with pytest.raises(UsageError, match="github-token"):
        other.import_units(open_source(str(dest)).units)
    assert not other.exists() or commit_count(other.root) == 1


def test_a_unit_added_on_both_sides_merges_with_the_later_change(store):
    ours = store.add("the same id, written here", tags=["here"])
    theirs = store.get(ours.id)
    theirs.text, theirs.tags, theirs.importance = "the same id, written there", ["there"], 0.9
    theirs.updated_at = ours.updated_at.replace(year=ours.updated_at.year + 1)
    merged, conflict = merge3(None, ours, theirs)
    assert merged.text == "the same id, written there" and merged.importance == 0.9
    assert merged.tags == ["here", "there"]
    assert conflict.kept == "remote" and "text" in conflict.fields and conflict.other_text == "the same id, written here"


def test_other_tools_exports_through_the_cli(cli, tmp_path):
    data = Path(__file__).parent / "data" / "foreign"
    for path, fmt in ((data / "chatgpt" / "conversations.json", "chatgpt"), (data / "claude" / "conversations.json", "claude"),
                      (data / "mem0" / "get_all_platform.json", "mem0"), (data / "letta" / "loop.af", "letta"),
                      (data / "markdown" / "basic-memory", "markdown")):
        done = cli("import", str(path), "--json", "--cube", fmt)
        assert done.returncode == 0, (fmt, done.err)
        out = json.loads(done.out)
        assert out["format"] == fmt and out["added"] > 0, out
    listed = json.loads(cli("list", "--cube", "chatgpt", "--json", "-n", "0").out)
    assert listed and all(u["kind"] == "episode" for u in listed)
    assert len({u["time"] for u in listed}) <= 2  # one time per conversation: recall's context joins its turns
    root, before = tmp_path / "store", head(tmp_path / "store")
    # Named as the wrong format: one line naming the format expected and the entry.
    assert_clean_failure(cli("import", str(data / "mem0" / "get_all_platform.json"), "--from", "chatgpt"), root, before,
                         "ChatGPT")
    assert_clean_failure(cli("import", str(data / "chatgpt" / "conversations.json"), "--from", "letta"), root, before,
                         "Letta")
