"""Settings: the consolidate policy, memos.toml round trips, and `memos config`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from memos_cli.errors import LockedError, StoreError, UsageError
from memos_cli.lock import StoreLock
from memos_cli.plaintext.heat import HeatWeights
from memos_cli.privacy.policy import keys as privacy_keys
from memos_cli.store.config import CONFIG_NAME, SCHEMA_VERSION, StoreConfig, all_keys
from memos_cli.store.policy import ConsolidatePolicy, policy_keys
from memos_cli.store.store import MemoryStore

from .conftest import assert_clean_failure, commit_count, git, head

# ---- the policy ---------------------------------------------------------------------


def test_policy_defaults() -> None:
    p = ConsolidatePolicy()
    assert (p.duplicates.enabled, p.duplicates.similarity, p.duplicates.text_similarity) == (True, 0.92, 0.6)
    assert (p.superseded.enabled, p.superseded.similarity) == (True, 0.68)
    assert p.superseded.kinds == ("fact", "preference") and p.superseded.judge == "rules"
    assert (p.expiry.enabled, p.expiry.action) == (True, "archive")
    assert p.heat.weights == HeatWeights()  # the same defaults as plaintext.heat
    assert (p.heat.activation_top, p.heat.cold_after_days) == (20, 90.0)
    assert (p.episodes.summarise, p.episodes.older_than_days, p.episodes.min_episodes) == (False, 30.0, 5)
    assert p.compaction.enabled is True
    assert ConsolidatePolicy.from_table({}) == p
    assert p.to_table() == {}  # nothing to write when nothing was set
    with pytest.raises(AttributeError):
        p.duplicates.similarity = 0.5  # type: ignore[misc]  # frozen


def test_policy_from_table_converts_and_keeps_types() -> None:
    p = ConsolidatePolicy.from_table({"heat": {"access": 1, "activation_top": 0, "cold_after_days": 0},
                                      "superseded": {"kinds": ["fact", "note", "fact"], "judge": "llm"},
                                      "expiry": {"action": "delete"}, "episodes": {"summarise": True}})
    assert p.heat.access == 1.0 and isinstance(p.heat.access, float)
    assert p.heat.activation_top == 0 and p.heat.weights.access == 1.0
    assert p.superseded.kinds == ("fact", "note") and p.superseded.judge == "llm"
    assert p.expiry.action == "delete" and p.episodes.summarise is True
    assert p.duplicates == ConsolidatePolicy().duplicates


BAD_POLICY = [
    ({"duplicates": {"enabled": "yes"}}, "consolidate.duplicates.enabled", "true or false"),
    ({"duplicates": {"enabled": 1}}, "consolidate.duplicates.enabled", "true or false"),
    ({"duplicates": {"similarity": 1.5}}, "consolidate.duplicates.similarity", "at most 1"),
    ({"duplicates": {"similarity": 0}}, "consolidate.duplicates.similarity", "above 0"),
    ({"duplicates": {"similarity": "high"}}, "consolidate.duplicates.similarity", "a number"),
    ({"duplicates": {"similarity": float("nan")}}, "consolidate.duplicates.similarity", "a number"),
    ({"duplicates": {"text_similarity": -0.1}}, "consolidate.duplicates.text_similarity", "from 0 to 1"),
    ({"superseded": {"similarity": 2}}, "consolidate.superseded.similarity", "at most 1"),
    ({"superseded": {"kinds": []}}, "consolidate.superseded.kinds", "non-empty list"),
    ({"superseded": {"kinds": "fact"}}, "consolidate.superseded.kinds", "list of kinds"),
    ({"superseded": {"kinds": ["fact", "two words"]}}, "consolidate.superseded.kinds", "bad kind"),
    ({"superseded": {"judge": "oracle"}}, "consolidate.superseded.judge", '"rules" or "llm"'),
    ({"expiry": {"action": "shred"}}, "consolidate.expiry.action", '"archive" or "delete"'),
    ({"heat": {"access": -1}}, "consolidate.heat.access", "from 0"),
    ({"heat": {"recency": True}}, "consolidate.heat.recency", "a number"),
    ({"heat": {"half_life_days": 0}}, "consolidate.heat.half_life_days", "above 0"),
    ({"heat": {"access_half": -5}}, "consolidate.heat.access_half", "above 0"),
    ({"heat": {"access": 0, "recency": 0, "importance": 0}}, "consolidate.heat weights", "above 0"),
    ({"heat": {"activation_top": 2.5}}, "consolidate.heat.activation_top", "whole number"),
    ({"heat": {"activation_top": -1}}, "consolidate.heat.activation_top", "whole number from 0"),
    ({"heat": {"cold_after_days": -3}}, "consolidate.heat.cold_after_days", "from 0"),
    ({"episodes": {"summarise": "no"}}, "consolidate.episodes.summarise", "true or false"),
    ({"episodes": {"older_than_days": "30d"}}, "consolidate.episodes.older_than_days", "a number"),
    ({"episodes": {"min_episodes": 0}}, "consolidate.episodes.min_episodes", "whole number from 1"),
    ({"compaction": {"enabled": None}}, "consolidate.compaction.enabled", "true or false"),
    ({"compaction": True}, "consolidate.compaction", "a table"),
]


@pytest.mark.parametrize(("table", "key", "allowed"), BAD_POLICY, ids=[b[1] + ":" + repr(b[0]) for b in BAD_POLICY])
def test_each_bad_value_is_rejected_naming_its_key(table: dict, key: str, allowed: str) -> None:
    with pytest.raises(UsageError) as err:
        ConsolidatePolicy.from_table(table)
    message = str(err.value)
    assert message.startswith(f"bad {key}"), message
    assert allowed in message, message


@pytest.mark.parametrize(("table", "key", "hint"), [
    ({"duplicates": {"similarty": 0.9}}, "consolidate.duplicates.similarty", "consolidate.duplicates.similarity"),
    ({"duplicats": {"similarity": 0.9}}, "consolidate.duplicats", "consolidate.duplicates"),
    ({"heat": {"decay": 2}}, "consolidate.heat.decay", None),
    ({"enabled": True}, "consolidate.enabled", None),
])
def test_an_unknown_key_is_an_error(table: dict, key: str, hint: str | None) -> None:
    with pytest.raises(UsageError) as err:
        ConsolidatePolicy.from_table(table)
    message = str(err.value)
    assert message.startswith(f"unknown setting {key}"), message
    if hint:
        assert f"did you mean {hint}?" in message
    else:
        assert "did you mean" not in message


def test_the_whole_consolidate_section_must_be_tables() -> None:
    with pytest.raises(UsageError, match="bad consolidate 3"):
        ConsolidatePolicy.from_table(3)


# ---- memos.toml ----------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_new_store_config_is_short_and_mentions_chat_and_consolidate(tmp_path: Path) -> None:
    text = StoreConfig().to_toml()
    assert "[chat]" in text and "[consolidate" in text  # in the header comment
    doc = tomllib.loads(text)
    assert set(doc) == {"store", "embedding", "lock", "recall"}  # no [chat], no [consolidate] tables
    assert StoreConfig.load(_write(tmp_path / CONFIG_NAME, text)) == StoreConfig()


def test_round_trip_through_to_toml_and_load(tmp_path: Path) -> None:
    cfg = StoreConfig(chat_model="/models/x.gguf", chat_ctx=4096, recall_k=7, lock_timeout=2.5)
    cfg = cfg.with_value("consolidate.duplicates.similarity", 0.9)
    cfg = cfg.with_value("consolidate.superseded.kinds", ["fact", "note"])
    cfg = cfg.with_value("consolidate.episodes.summarise", True)
    cfg = cfg.with_value("consolidate.heat.activation_top", 20)  # the default, but set: kept in the file
    path = _write(tmp_path / CONFIG_NAME, cfg.to_toml())
    back = StoreConfig.load(path)
    assert back == cfg
    assert back.consolidate.duplicates.similarity == 0.9
    assert back.consolidate.superseded.kinds == ("fact", "note")
    assert back.consolidate.episodes.summarise is True
    doc = tomllib.loads(path.read_text())
    assert doc["consolidate"] == {"duplicates": {"similarity": 0.9}, "superseded": {"kinds": ["fact", "note"]},
                                  "heat": {"activation_top": 20}, "episodes": {"summarise": True}}
    assert doc["chat"] == {"model": "/models/x.gguf", "ctx": 4096}
    assert back.to_toml() == cfg.to_toml()


def test_present_keys_at_their_defaults_stay_and_unknown_sections_are_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / CONFIG_NAME, (
        '[store]\nschema_version = 3\n[recall]\nk = 10\nfuture = "kept"\n'
        '[consolidate.duplicates]\nsimilarity = 0.92\n[plugins]\nname = "x"\n'))
    cfg = StoreConfig.load(path)
    assert cfg.consolidate_keys == {"consolidate.duplicates.similarity"}
    doc = tomllib.loads(cfg.to_toml())
    assert doc["consolidate"] == {"duplicates": {"similarity": 0.92}}
    assert doc["plugins"] == {"name": "x"} and doc["recall"] == {"k": 10, "future": "kept"}
    assert doc["embedding"] == {"model": "all-MiniLM-L6-v2"}  # the old sections are always written


@pytest.mark.parametrize(("text", "match"), [
    ("[consolidate.duplicates]\nsimilarty = 0.9\n", "unknown setting consolidate.duplicates.similarty"),
    ("[consolidate.heat]\nactivation_top = -1\n", "bad consolidate.heat.activation_top -1"),
    ("[recall]\nk = 0\n", "bad recall.k 0"),
    ('[lock]\ntimeout = "soon"\n', 'bad lock.timeout "soon"'),
    ("[chat]\nctx = 12\n", "bad chat.ctx 12"),
    ("recall = 3\n", r"bad \[recall\]"),
])
def test_a_bad_memos_toml_refuses_to_load_naming_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / CONFIG_NAME, "[store]\nschema_version = 3\n" + text if not text.startswith("recall")
                  else text + "[store]\nschema_version = 3\n")
    with pytest.raises(StoreError, match=match) as err:
        StoreConfig.load(path)
    assert str(err.value).startswith(str(path))


def test_the_old_sections_load_as_before(tmp_path: Path) -> None:
    path = _write(tmp_path / CONFIG_NAME, '[store]\nschema_version = 2\n[embedding]\nmodel = "/m/e.gguf"\n'
                  '[lock]\ntimeout = 3\n[recall]\nk = 4\n[chat]\nmodel = ""\nctx = 2048\n')
    cfg = StoreConfig.load(path)
    assert (cfg.schema_version, cfg.embedding_model, cfg.lock_timeout, cfg.recall_k) == (2, "/m/e.gguf", 3.0, 4)
    assert cfg.chat_model is None and cfg.chat_ctx == 2048  # an empty model is the default, as it was
    with pytest.raises(StoreError, match="newer memos"):
        StoreConfig.load(_write(path, f"[store]\nschema_version = {SCHEMA_VERSION + 1}\n"))
    with pytest.raises(StoreError, match="schema_version is missing"):
        StoreConfig.load(_write(path, "[recall]\nk = 3\n"))


def test_settings_get_with_value_and_without() -> None:
    cfg = StoreConfig()
    keys = [s.key for s in cfg.settings()]
    assert keys == all_keys() and keys[:10] == ["store.schema_version", "embedding.model", "lock.timeout", "recall.k",
                                                "recall.min_relevance", "chat.model", "chat.ctx", "chat.k",
                                                "chat.budget", "chat.min_relevance"]
    n = len(policy_keys())
    assert keys[10:10 + n] == policy_keys() and keys[10 + n:] == privacy_keys()
    assert all(s.is_default for s in cfg.settings())
    assert cfg.get("consolidate.duplicates.similarity").value == 0.92
    changed = cfg.with_value("lock.timeout", 3)
    assert changed.lock_timeout == 3.0 and cfg.lock_timeout == 10.0  # a new config; the old one is untouched
    assert not changed.get("lock.timeout").is_default
    assert changed.without("lock.timeout") == cfg
    explicit = cfg.with_value("consolidate.heat.activation_top", 20)
    assert explicit.consolidate == cfg.consolidate and explicit.consolidate_keys == {"consolidate.heat.activation_top"}
    assert explicit.without("consolidate.heat.activation_top") == cfg
    assert cfg.without("chat.model") == cfg
    with pytest.raises(UsageError, match="read-only"):
        cfg.with_value("store.schema_version", 4)
    with pytest.raises(UsageError, match=r"unknown setting recall\.kk \(did you mean recall\.k\?\)"):
        cfg.get("recall.kk")
    with pytest.raises(UsageError, match="consolidate.heat is a section"):
        cfg.with_value("consolidate.heat", 3)
    with pytest.raises(UsageError, match="unknown setting nope"):
        cfg.without("nope")
    with pytest.raises(UsageError, match="bad consolidate.heat weights"):
        cfg.with_value("consolidate.heat.access", 0).with_value("consolidate.heat.recency", 0) \
            .with_value("consolidate.heat.importance", 0)


# ---- MemoryStore.set_config ---------------------------------------------------------------


@pytest.fixture
def bare(tmp_path: Path) -> MemoryStore:
    """A store with no units (setting config needs no embedding model)."""
    s = MemoryStore(tmp_path / "store")
    s.init()
    return s


def test_set_config_is_one_commit_and_unset_another(bare: MemoryStore) -> None:
    root = bare.root
    n = commit_count(root)
    result = bare.set_config("consolidate.duplicates.similarity", 0.9)
    assert result["changed"] and result["old"] == 0.92 and result["value"] == 0.9 and result["default"] == 0.92
    assert commit_count(root) == n + 1 and result["commit"] == head(root)
    assert git(root, "show", "--format=", "--name-only", "HEAD").split() == [CONFIG_NAME]
    message = git(root, "log", "-1", "--format=%B")
    assert message.startswith("config: set consolidate.duplicates.similarity = 0.9")
    assert "Memos-Op: config" in message and "Memos-Setting: consolidate.duplicates.similarity" in message
    assert MemoryStore(root).config.consolidate.duplicates.similarity == 0.9
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""

    again = bare.set_config("consolidate.duplicates.similarity", 0.9)
    assert not again["changed"] and again["commit"] is None and commit_count(root) == n + 1

    back = bare.set_config("consolidate.duplicates.similarity", None, unset=True)
    assert back["changed"] and back["value"] == 0.92 and commit_count(root) == n + 2
    assert "consolidate" not in tomllib.loads((root / CONFIG_NAME).read_text())
    assert not bare.set_config("consolidate.duplicates.similarity", None, unset=True)["changed"]
    assert commit_count(root) == n + 2


def test_set_config_refuses_bad_input_and_changes_nothing(bare: MemoryStore) -> None:
    root = bare.root
    before, text = head(root), (root / CONFIG_NAME).read_text()
    for key, value, match in [("recall.kk", 3, "unknown setting"), ("recall.k", "ten", "bad recall.k"),
                              ("consolidate.superseded.judge", "oracle", "bad consolidate.superseded.judge"),
                              ("store.schema_version", 4, "read-only")]:
        with pytest.raises(UsageError, match=match):
            bare.set_config(key, value)
    with pytest.raises(UsageError, match="read-only"):
        bare.set_config("store.schema_version", None, unset=True)
    assert head(root) == before and (root / CONFIG_NAME).read_text() == text


def test_set_config_on_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    s = MemoryStore(tmp_path / "none")
    with pytest.raises(StoreError, match="no memos store"):
        s.set_config("recall.k", 3)
    assert not (tmp_path / "none").exists()


def test_a_failed_config_write_puts_the_file_back(bare: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    root = bare.root
    before, text = head(root), (root / CONFIG_NAME).read_text()

    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("git commit-tree failed: disk full")

    monkeypatch.setattr(type(bare.repo), "commit", broken)
    with pytest.raises(StoreError, match="disk full"):
        bare.set_config("recall.k", 3)
    monkeypatch.undo()
    assert head(root) == before and (root / CONFIG_NAME).read_text() == text
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert MemoryStore(root).config.recall_k == 10 and bare.config.recall_k == 10


def test_set_config_waits_for_the_lock(bare: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_LOCK_TIMEOUT", "0")
    before = head(bare.root)
    holder = StoreLock(bare.state_dir / "lock", 0)
    assert holder.acquire(blocking=False)
    try:
        with pytest.raises(LockedError):
            bare.set_config("recall.k", 3)
    finally:
        holder.release()
    assert head(bare.root) == before and bare.config.recall_k == 10
    assert bare.set_config("recall.k", 3)["changed"]


def test_config_survives_an_upgrade(bare: MemoryStore) -> None:
    root = bare.root
    bare.set_config("consolidate.expiry.action", "delete")
    path = root / CONFIG_NAME
    path.write_text(path.read_text().replace(f"schema_version = {SCHEMA_VERSION}", "schema_version = 2"))
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "schema 2")
    old = MemoryStore(root)
    old.set_config("recall.k", 4)  # the transaction upgrades first, in a commit of its own
    cfg = MemoryStore(root).config
    assert cfg.schema_version == SCHEMA_VERSION and cfg.recall_k == 4
    assert cfg.consolidate.expiry.action == "delete"


# ---- the command line --------------------------------------------------------------


@pytest.fixture
def made(cli, tmp_path: Path) -> Path:
    done = cli("init")
    assert done.returncode == 0, done.err
    return tmp_path / "store"


@pytest.mark.slow  # each call starts Python
def test_config_show_json_and_table(cli, made: Path) -> None:
    done = cli("config", "show", "--json")
    assert done.returncode == 0, done.err
    data = json.loads(done.out)
    assert set(data) == {"store", "embedding", "lock", "recall", "chat", "consolidate", "privacy"}
    sim = data["consolidate"]["duplicates"]["similarity"]
    assert sim["value"] == 0.92 and sim["default"] == 0.92 and sim["is_default"] is True and sim["help"]
    assert data["store"]["schema_version"]["read_only"] is True
    assert data["consolidate"]["superseded"]["kinds"]["value"] == ["fact", "preference"]
    assert data["chat"]["model"]["value"] is None
    assert json.loads(cli("config", "--json").out) == data  # `memos config` is `memos config show`
    table = cli("config", env={"COLUMNS": "200"})
    assert table.returncode == 0 and table.err == ""
    assert "consolidate.heat.activation_top" in table.out and "(default)" in table.out


@pytest.mark.slow  # each call starts Python
def test_config_get_set_unset(cli, made: Path) -> None:
    n = commit_count(made)
    assert cli("config", "get", "consolidate.duplicates.similarity").out == "0.92\n"
    assert cli("config", "get", "embedding.model").out == "all-MiniLM-L6-v2\n"  # a string as it is
    assert cli("config", "get", "chat.model").out == "\n"  # unset

    done = cli("config", "set", "consolidate.duplicates.similarity", "0.88")
    assert done.returncode == 0, done.err
    assert "consolidate.duplicates.similarity = 0.88 (was 0.92)" in done.out
    assert commit_count(made) == n + 1
    assert tomllib.loads((made / CONFIG_NAME).read_text())["consolidate"] == {"duplicates": {"similarity": 0.88}}
    got = json.loads(cli("config", "get", "consolidate.duplicates.similarity", "--json").out)
    assert got["value"] == 0.88 and got["is_default"] is False and got["default"] == 0.92

    same = cli("config", "set", "consolidate.duplicates.similarity", "0.88")
    assert same.returncode == 0 and "already 0.88; nothing changed" in same.out and commit_count(made) == n + 1

    listed = cli("config", "set", "consolidate.superseded.kinds", '["fact", "note"]', "--json")
    assert json.loads(listed.out)["value"] == ["fact", "note"] and commit_count(made) == n + 2
    bare = cli("config", "set", "consolidate.superseded.judge", "llm")  # not TOML: the text itself
    assert bare.returncode == 0 and cli("config", "get", "consolidate.superseded.judge").out == "llm\n"
    path = cli("config", "set", "chat.model", "/models/chat.gguf")
    assert path.returncode == 0 and cli("config", "get", "chat.model").out == "/models/chat.gguf\n"
    assert commit_count(made) == n + 4

    unset = cli("config", "unset", "consolidate.duplicates.similarity", "--json")
    result = json.loads(unset.out)
    assert result["changed"] and result["value"] == 0.92 and result["old"] == 0.88
    assert commit_count(made) == n + 5 and result["commit"] == head(made)
    assert cli("config", "get", "consolidate.duplicates.similarity").out == "0.92\n"
    again = cli("config", "unset", "consolidate.duplicates.similarity")
    assert again.returncode == 0 and "already at its default 0.92" in again.out and commit_count(made) == n + 5
    assert git(made, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow  # each call starts Python
@pytest.mark.parametrize(("args", "match"), [
    (("set", "consolidate.duplicates.similarty", "0.9"), "did you mean consolidate.duplicates.similarity"),
    (("set", "nothing.here", "1"), "unknown setting nothing.here"),
    (("get", "recall.kk"), "unknown setting recall.kk"),
    (("unset", "consolidate.heat.decay"), "unknown setting consolidate.heat.decay"),
    (("set", "consolidate.duplicates.enabled", "maybe"), "bad consolidate.duplicates.enabled"),
    (("set", "recall.k", "ten"), 'bad recall.k "ten"'),
    (("set", "consolidate.superseded.kinds", "fact"), "bad consolidate.superseded.kinds"),
    (("set", "consolidate.duplicates.similarity", "1.5"), "at most 1"),
    (("set", "consolidate.heat.access", "--", "-1"), "bad consolidate.heat.access -1"),
    (("set", "recall.k", "1001"), "bad recall.k 1001"),
    (("set", "store.schema_version", "4"), "read-only"),
    (("unset", "store.schema_version"), "read-only"),
    (("set", "consolidate.heat", "1"), "is a section"),
])
def test_config_bad_input_is_one_clean_line(cli, made: Path, args: tuple[str, ...], match: str) -> None:
    before = head(made)
    text = (made / CONFIG_NAME).read_text()
    assert_clean_failure(cli("config", *args), made, before, match)
    assert (made / CONFIG_NAME).read_text() == text


@pytest.mark.slow  # each call starts Python
def test_config_without_a_store(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for args in (("config",), ("config", "show", "--json"), ("config", "get", "recall.k"),
                 ("config", "set", "recall.k", "3"), ("config", "unset", "recall.k")):
        assert_clean_failure(cli(*args, store=missing), match="no memos store")
    assert not missing.exists()


@pytest.mark.slow  # each call starts Python
def test_a_bad_policy_in_memos_toml_is_reported_by_every_command(cli, made: Path) -> None:
    path = made / CONFIG_NAME
    path.write_text(path.read_text() + "\n[consolidate.heat]\nacess = 1\n")
    for args in (("config",), ("list",), ("config", "set", "recall.k", "3")):
        assert_clean_failure(cli(*args), match="did you mean consolidate.heat.access")


@pytest.mark.slow
def test_recall_k_comes_from_the_config(cli, made: Path) -> None:
    lines = "".join(json.dumps({"text": f"note {i} about the garden"}) + "\n" for i in range(4))
    assert cli("import", "-", input=lines).returncode == 0
    assert cli("config", "set", "recall.k", "2").returncode == 0
    done = cli("recall", "garden", "--json")
    assert done.returncode == 0, done.err
    assert len(json.loads(done.out)["results"]) == 2
    assert len(json.loads(cli("recall", "garden", "-k", "3", "--json").out)["results"]) == 3
