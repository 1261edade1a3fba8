"""Parametric memory in the store: records and blobs under params/, one commit per change, check,
purge (from the store and all of history), log/diff/rollback, and `memos param`. No model is loaded:
blobs are made with numpy."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from memos_cli.errors import NotFoundError, StoreError, UsageError
from memos_cli.store import check as checking
from memos_cli.store import history, params
from memos_cli.store.params import ParamRecord
from memos_cli.store.purge import purge

from .conftest import assert_clean_failure, commit_count, git, head

N_LAYER, N_EMBD = 4, 8
MODEL_SHA = "ab" * 32


def _record(name: str, kind: str = "lora", sources: list | None = None, model_sha: str = MODEL_SHA,
            **fields: object) -> ParamRecord:
    model = {"sha256": model_sha, "name": "tiny", "arch": "gemma3", "n_layer": N_LAYER, "n_embd": N_EMBD}
    return ParamRecord(name=name, kind=kind, model=model, sources=sources or [], **fields)


def _lora_tensors(rank: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "blk.0.attn_q.weight.lora_a": rng.standard_normal((rank, N_EMBD)).astype(np.float32),
        "blk.0.attn_q.weight.lora_b": rng.standard_normal((N_EMBD, rank)).astype(np.float32),
        "blk.2.ffn_up.weight.lora_a": rng.standard_normal((rank, N_EMBD)).astype(np.float32),
        "blk.2.ffn_up.weight.lora_b": rng.standard_normal((16, rank)).astype(np.float32),
    }


def _blob(record: ParamRecord, seed: int = 0, tensors: dict | None = None, **extra: object) -> bytes:
    if record.kind == "lora":
        meta = params.metadata_for(record, rank=2, alpha=4, **extra)
        return params.encode_blob("lora", tensors if tensors is not None else _lora_tensors(seed=seed), meta)
    direction = np.random.default_rng(seed).standard_normal((N_LAYER - 1, N_EMBD)).astype(np.float32)
    meta = params.metadata_for(record, layers="1-3", **extra)
    return params.encode_blob("steer", tensors if tensors is not None else {"direction": direction}, meta)


def _source(unit) -> dict:
    return {"id": unit.id, "version": unit.version}


def _save(store, name: str, kind: str = "lora", units=(), seed: int = 0, **fields: object) -> ParamRecord:
    record = _record(name, kind, [_source(u) for u in units], **fields)
    return params.save(store, record, _blob(record, seed))


def _all_objects(root: Path) -> str:
    return subprocess.run(["git", "rev-list", "--all", "--objects"], cwd=root, capture_output=True, text=True,
                          check=True).stdout


# ---- records and blobs -----------------------------------------------------------------------


def test_save_get_list_round_trip_one_commit_each(store):
    unit = store.add("Alice's cat is called Miso")
    commits = commit_count(store.root)
    saved = _save(store, "Cat-Facts", units=[unit], enabled=True, scale=0.75, gate=0.4, loss=0.12,
                  hparams={"rank": 2, "steps": 10}, report={"trained": "9/10"})
    assert saved.name == "cat-facts"  # names are taken case-insensitively
    assert commit_count(store.root) == commits + 1
    last = history.log(store, 1)[0]
    assert last.op == "learn" and last.trailers["Memos-Param"] == "cat-facts" and "cat-facts" in last.subject

    rel = params.record_path("cat-facts")
    text = (store.root / rel).read_text()
    assert text.endswith("}\n") and json.loads(text) == saved.to_json()
    assert text == json.dumps(saved.to_json(), sort_keys=True, indent=2) + "\n"
    blob = (store.root / params.blob_path(saved.blob)).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == saved.blob
    for path in (store.root / rel, store.root / params.blob_path(saved.blob)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""

    got = params.get(store, "CAT-FACTS")
    assert got == saved and got.sources == [{"id": unit.id, "version": 1}] and got.enabled and got.scale == 0.75
    assert params.read_blob(store, got) == blob
    tensors, meta = params.decode_blob(blob)
    assert meta["format"] == "memos-param" and meta["kind"] == "lora" and meta["model_sha256"] == MODEL_SHA
    assert json.loads(meta["sources"]) == got.sources and meta["rank"] == "2"
    assert np.array_equal(tensors["blk.0.attn_q.weight.lora_a"], _lora_tensors()["blk.0.attn_q.weight.lora_a"])

    steer = _save(store, "cheerful", "steer", cube="work")
    assert commit_count(store.root) == commits + 2 and history.log(store, 1)[0].op == "steer"
    assert [r.name for r in params.records(store)] == ["cat-facts", "cheerful"]
    assert [r.name for r in params.records(store, cube="work")] == ["cheerful"]
    assert params.status(store, steer, MODEL_SHA) == ("current", "")
    with pytest.raises(NotFoundError, match="no parametric memory named nope"):
        params.get(store, "nope")


def test_names_are_checked_and_an_existing_one_needs_replace(store):
    for bad in ("", "-x", ".x", "has space", "a" * 65, "x/y", "é"):
        with pytest.raises(UsageError, match="bad name"):
            params.check_param_name(bad)
    first = _save(store, "facts")
    before = head(store.root)
    with pytest.raises(UsageError, match="--replace"):
        _save(store, "facts", seed=1)
    assert head(store.root) == before
    record = _record("facts")
    second = params.save(store, record, _blob(record, seed=1), replace=True)
    assert second.blob != first.blob and head(store.root) != before
    # The blob the record no longer uses went in the same commit.
    assert not (store.root / params.blob_path(first.blob)).exists()
    assert (store.root / params.blob_path(second.blob)).exists()
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""


def test_remove_drops_a_blob_once_no_record_uses_it(store):
    a = _save(store, "one", "steer")
    b = _save(store, "two", "steer")  # the same tensors and metadata: the same blob
    assert a.blob == b.blob
    commits = commit_count(store.root)
    assert [r.name for r in params.remove(store, ["one"])] == ["one"]
    assert commit_count(store.root) == commits + 1 and history.log(store, 1)[0].op == "param-rm"
    assert (store.root / params.blob_path(a.blob)).exists()
    params.remove(store, ["two"])
    assert not (store.root / params.blob_path(a.blob)).exists()
    assert params.records(store) == []
    before = head(store.root)
    with pytest.raises(NotFoundError):
        params.remove(store, ["two"])
    assert head(store.root) == before


def test_enable_disable_and_scale_commit_only_changes(store):
    _save(store, "facts")
    commits = commit_count(store.root)
    assert [r.name for r in params.set_enabled(store, ["facts"], True)] == ["facts"]
    assert params.get(store, "facts").enabled and commit_count(store.root) == commits + 1
    assert params.set_enabled(store, ["facts"], True) == [] and commit_count(store.root) == commits + 1
    params.set_enabled(store, ["facts"], False)
    assert not params.get(store, "facts").enabled and commit_count(store.root) == commits + 2
    assert params.set_scale(store, "facts", -0.5).scale == -0.5 and commit_count(store.root) == commits + 3
    assert params.set_scale(store, "facts", -0.5).scale == -0.5 and commit_count(store.root) == commits + 3
    assert history.log(store, 1)[0].op == "param"
    for bad in (float("nan"), float("inf"), "x", True):
        with pytest.raises(UsageError, match="bad scale"):
            params.set_scale(store, "facts", bad)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        params.set_enabled(store, ["facts", "nope"], True)
    assert commit_count(store.root) == commits + 3


def test_status_current_stale_and_other_model(store):
    unit = store.add("Bob plays the oboe")
    other = store.add("Bob lives in Ghent")
    saved = _save(store, "bob", units=[unit, other])
    assert params.status(store, saved, MODEL_SHA) == ("current", "")
    assert params.status(store, saved, None) == ("current", "")
    state, reason = params.status(store, saved, "cd" * 32)
    assert state == "other model" and "cdcdcdcdcdcd" in reason
    store.edit(unit.id, {"text": "Bob plays the bassoon"})
    state, reason = params.status(store, saved, MODEL_SHA)
    assert state == "stale" and unit.id in reason and "version 2" in reason
    store.forget([other.id])
    found = params.statuses(store, [saved, _record("x")], MODEL_SHA)
    assert found[0][0] == "stale" and "and 1 more" in found[0][1] and found[1] == ("current", "")
    fresh = ParamRecord.from_json({**saved.to_json(), "sources": [_source(other)]})
    assert params.status(store, fresh, None) == ("stale", f"unit {other.id} was forgotten")


def test_save_refuses_sources_changed_while_learning(store):
    unit = store.add("Carol likes tea")
    record = _record("carol", sources=[_source(unit)])
    blob = _blob(record)
    store.edit(unit.id, {"text": "Carol likes coffee"})
    before = head(store.root)
    with pytest.raises(StoreError, match="not as they were when learning started"):
        params.save(store, record, blob)
    assert head(store.root) == before and not (store.root / "params").exists()


def test_bad_blobs_are_refused_one_problem_each(store):
    lora, steer = _record("l"), _record("s", "steer")
    assert params.verify_blob(_blob(lora), None, lora) == []
    assert params.verify_blob(_blob(steer), None, steer) == []

    def problems(record: ParamRecord, data: bytes) -> str:
        found = params.verify_blob(data, None, record)
        assert found, "expected a problem"
        return " | ".join(found)

    tensors = _lora_tensors()
    del tensors["blk.2.ffn_up.weight.lora_b"]
    assert "has no lora_b" in problems(lora, _blob(lora, tensors=tensors))
    tensors = _lora_tensors(rank=3)
    assert "rank 2" in problems(lora, _blob(lora, tensors=tensors))
    tensors = {**_lora_tensors(), "blk.9.attn_q.weight.lora_a": np.zeros((2, 8), np.float32),
               "blk.9.attn_q.weight.lora_b": np.zeros((8, 2), np.float32)}
    assert "past the model's 4 layers" in problems(lora, _blob(lora, tensors=tensors))
    tensors = {**_lora_tensors(), "blk.0.attn_q.weight.lora_a": np.zeros((2, 0), np.float32)}
    assert "empty dimension" in problems(lora, _blob(lora, tensors=tensors))
    tensors = _lora_tensors()
    tensors["blk.0.attn_q.weight.lora_b"][0, 0] = np.nan
    assert "not finite" in problems(lora, _blob(lora, tensors=tensors))
    assert "shape (2, 8), not (3, 8)" in problems(steer, _blob(steer, tensors={"direction": np.zeros((2, 8), np.float32)}))
    assert "steer" in problems(lora, _blob(steer))  # a steering vector's blob under a LoRA's record
    other = _record("l", model_sha="cd" * 32)
    assert "made for model" in problems(lora, _blob(other))
    from safetensors.numpy import save as st_save

    f64 = st_save({"direction": np.zeros((3, 8), np.float64)}, metadata=params.metadata_for(steer, layers="1-3",
                  format="memos-param", version="1", kind="steer"))
    assert "not float32" in problems(steer, f64)
    no_format = st_save({"direction": np.zeros((3, 8), np.float32)}, metadata={"kind": "steer"})
    assert "format" in problems(steer, no_format)
    assert "not a readable safetensors file" in problems(steer, b"not a blob at all")

    # save() verifies first: nothing is written.
    before = head(store.root)
    with pytest.raises(UsageError, match="bad blob for s: its direction has shape"):
        params.save(store, steer, _blob(steer, tensors={"direction": np.zeros((4, 8), np.float32)}))
    with pytest.raises(UsageError):
        params.decode_blob(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert head(store.root) == before and not (store.root / "params").exists()


def test_a_tampered_or_truncated_blob_is_found_by_check_and_refused_by_read_blob(store):
    saved = _save(store, "facts")
    report = checking.check(store)
    assert report.ok and report.to_json()["params"] == 1
    path = store.root / params.blob_path(saved.blob)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the tensor data, committed by hand
    path.write_bytes(bytes(data))
    git(store.root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tamper")
    report = checking.check(store)
    assert not report.ok
    found = [p for p in report.problems if p.area == "params"]
    assert len(found) == 1 and "tampered with or truncated" in found[0].message
    assert "memos param rm facts" in found[0].message and not found[0].fixable
    with pytest.raises(StoreError, match="^blob of facts is damaged: its sha256 is") as exc:
        params.read_blob(store, saved)
    assert "\n" not in str(exc.value)

    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated (not committed this time)
    report = checking.check(store)
    messages = " | ".join(p.message for p in report.problems if p.area == "params")
    assert "not a readable safetensors file" in messages
    assert any(p.area == "git" and "params/blobs" in p.message for p in report.problems)  # uncommitted
    with pytest.raises(StoreError, match="blob of facts is damaged"):
        params.read_blob(store, saved)
    path.unlink()
    with pytest.raises(StoreError, match="blob of facts is missing"):
        params.read_blob(store, saved)
    # Removing the memory puts things right.
    params.remove(store, ["facts"])
    assert checking.check(store).ok


def test_check_reports_damaged_records_and_orphaned_blobs(store):
    saved = _save(store, "facts")
    (store.root / params.record_path("facts")).write_text('{"name": "facts", "kind": "lora"')
    git(store.root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "break it")
    with pytest.raises(StoreError, match=r"params/facts.json: not valid JSON.*memos param rm facts"):
        params.records(store)
    messages = [p.message for p in checking.check(store).problems if p.area == "params"]
    assert len(messages) == 1 and "params/facts.json: not valid JSON" in messages[0]
    params.remove(store, ["facts"])  # a damaged record can be removed; its blob is then an orphan
    messages = [p.message for p in checking.check(store).problems if p.area == "params"]
    assert messages == [f"blob {params.blob_path(saved.blob)} belongs to no parametric memory; remove it with "
                        f"`git -C {store.root} rm {params.blob_path(saved.blob)}`"]


# ---- purge, history ---------------------------------------------------------------------------


def test_purge_removes_what_was_learned_from_a_unit_from_the_store_and_all_history(store):
    secret = store.add("the vault code is 4471")
    keep = store.add("Dana likes jazz")
    leaked = _save(store, "vault", units=[secret])
    kept = _save(store, "dana", units=[keep], seed=1)
    shared = _save(store, "vault-copy", units=[secret])  # the same tensors and sources: vault's blob
    assert shared.blob == leaked.blob
    # "mixed": first learned from the secret, then learned again from another unit.
    mixed_old = _save(store, "mixed", units=[secret, keep], seed=2)
    old_record_object = git(store.root, "rev-parse", f"HEAD:{params.record_path('mixed')}").strip()
    leaked_objects = [git(store.root, "rev-parse", f"HEAD:{path}").strip()
                      for path in (params.blob_path(leaked.blob), params.blob_path(mixed_old.blob))]
    record = _record("mixed", sources=[_source(keep)])
    mixed_new = params.save(store, record, _blob(record, seed=3), replace=True)
    commits = commit_count(store.root)

    report = purge(store, [secret.id])
    assert report.params == ["vault", "vault-copy"]
    assert report.to_json()["params"] == ["vault", "vault-copy"]
    assert any("earlier versions of parametric memories" in n and "mixed" in n for n in report.notes)
    assert commit_count(store.root) == commits + 1  # commits kept (some now empty), plus the purge
    assert [r.name for r in params.records(store)] == ["dana", "mixed"]
    assert params.get(store, "mixed") == mixed_new
    for sha in (leaked.blob, mixed_old.blob):
        assert not (store.root / params.blob_path(sha)).exists()
    objects = _all_objects(store.root)
    assert leaked.blob not in objects and mixed_old.blob not in objects
    assert kept.blob in objects and mixed_new.blob in objects
    assert "params/vault.json" not in objects and "params/vault-copy.json" not in objects
    for obj in [old_record_object, *leaked_objects]:  # not merely unreachable: pruned
        assert obj not in objects
        assert subprocess.run(["git", "cat-file", "-e", obj], cwd=store.root).returncode != 0
    assert git(store.root, "log", "--all", "--format=%H", "--", params.record_path("vault")).strip() == ""
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    report = checking.check(store)
    assert report.ok, [p.message for p in report.problems]


def test_purge_of_a_unit_nothing_was_learned_from_leaves_parametric_memory(store):
    unit = store.add("nothing learned from this")
    keep = store.add("learned from this")
    saved = _save(store, "keep", units=[keep])
    report = purge(store, [unit.id])
    assert report.params == [] and params.get(store, "keep") == saved
    assert params.read_blob(store, saved)


def test_log_diff_and_rollback_carry_parametric_memory(store, cli):
    unit = store.add("Erin runs on Sundays")
    start = head(store.root)
    _save(store, "erin", units=[unit], enabled=True)
    saved_at = head(store.root)
    params.set_scale(store, "erin", 0.5)
    params.remove(store, ["erin"])

    done = cli("log", "-n", "3", "--json")
    assert done.returncode == 0, done.err
    assert [c["op"] for c in json.loads(done.out)] == ["param-rm", "param", "learn"]
    assert cli("log").returncode == 0
    done = cli("diff", "--json")
    assert done.returncode == 0, done.err
    diff = json.loads(done.out)
    assert diff["units"] == [] and [(p["name"], p["change"]) for p in diff["params"]] == [("erin", "removed")]
    done = cli("diff", start, "--json")
    assert json.loads(done.out)["params"] == []  # added and removed since
    done = cli("diff", start, saved_at, "--json")
    assert [(p["name"], p["change"]) for p in json.loads(done.out)["params"]] == [("erin", "added")]
    done = cli("diff", "HEAD~2", "HEAD~1")
    assert done.returncode == 0 and "parametric memory erin" in done.out and "scale: 1.0 -> 0.5" in done.out, done.out

    done = cli("rollback", saved_at, "--yes", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["params"] == ["erin"]
    restored = params.get(store, "erin")
    assert restored.scale == 1.0 and params.read_blob(store, restored)
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert checking.check(store).ok


# ---- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def fake_model(tmp_path: Path) -> tuple[str, str]:
    """A file that passes for a GGUF (statuses only hash it): (path, sha256)."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_param_list_show_enable_disable_scale_rm(store, cli, fake_model):
    model, sha = fake_model
    unit = store.add("Frank's birthday is in May")
    _save(store, "frank", units=[unit], model_sha=sha)
    _save(store, "elsewhere", "steer", model_sha="cd" * 32)

    done = cli("param", "list", "--model", model, "--json")
    assert done.returncode == 0, done.err
    rows = {r["name"]: r for r in json.loads(done.out)}
    assert rows["frank"]["status"] == "current" and rows["frank"]["kind"] == "lora" and rows["frank"]["bytes"] > 0
    assert rows["elsewhere"]["status"] == "other model" and not rows["elsewhere"]["enabled"]
    done = cli("param", "list", "--model", model)
    assert done.returncode == 0 and "frank" in done.out and "other model" in done.out, done.out

    before = head(store.root)
    done = cli("param", "enable", "frank", "--json")
    assert done.returncode == 0 and json.loads(done.out)["enabled"] == ["frank"], done.err
    assert head(store.root) != before and params.get(store, "frank").enabled
    done = cli("param", "enable", "frank")
    assert done.returncode == 0 and "already enabled" in done.out
    done = cli("param", "scale", "frank", "-0.25", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["scale"] == -0.25 and params.get(store, "frank").scale == -0.25

    store.edit(unit.id, {"text": "Frank's birthday is in June"})
    done = cli("param", "show", "frank", "--model", model, "--json")
    assert done.returncode == 0, done.err
    shown = json.loads(done.out)
    assert shown["status"] == "stale" and unit.id in shown["reason"] and shown["enabled"] and shown["scale"] == -0.25
    assert shown["path"] == params.blob_path(shown["blob"]) and shown["bytes"] > 0
    done = cli("param", "show", "frank", "--model", model)
    assert done.returncode == 0 and "stale" in done.out and unit.id in done.out, done.out

    done = cli("param", "disable", "frank", "--json")
    assert done.returncode == 0 and json.loads(done.out)["disabled"] == ["frank"]

    # Bad input: one line, non-zero exit, the store unchanged.
    before = head(store.root)
    for args, match in ((["param", "show", "nope"], "no parametric memory named nope"),
                        (["param", "rm", "frank", "nope", "--yes"], "no parametric memory named nope"),
                        (["param", "enable", "nope"], "no parametric memory named nope"),
                        (["param", "scale", "frank", "abc"], "bad scale 'abc': use a number"),
                        (["param", "scale", "frank", "nan"], "bad scale"),
                        (["param", "show", "Bad Name"], "bad name"),
                        (["param", "list", "--model", str(Path(model).with_name("missing.gguf"))], "not found")):
        assert_clean_failure(cli(*args), store.root, before, match)

    done = cli("param", "rm", "frank", "elsewhere", "--yes", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["removed"] == ["frank", "elsewhere"]
    assert params.records(store) == [] and not list((store.root / params.BLOBS_DIR).glob("*"))
    done = cli("param", "list", "--json")
    assert done.returncode == 0 and json.loads(done.out) == []


def test_cli_purge_lists_the_parametric_memories_it_removed(store, cli):
    unit = store.add("a secret to forget")
    _save(store, "secretive", units=[unit])
    done = cli("purge", unit.id, "--yes", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["params"] == ["secretive"]
    assert params.records(store) == []


@pytest.mark.parametrize("point", ["purge.started", "purge.rewritten"])
def test_a_purge_killed_midway_is_finished_with_parametric_memory_too(point: str, store, cli, fake_model):
    import signal

    from memos_cli.store.killpoint import ENV as KILL_AT

    unit = store.add("a secret learned into weights")
    keep = store.add("something else")
    leaked = _save(store, "leaky", units=[unit])
    kept = _save(store, "kept", units=[keep], seed=1)
    done = cli("purge", unit.id, "--yes", env={KILL_AT: point})
    assert done.returncode == -signal.SIGKILL, done.err
    after = cli("param", "list", "--model", fake_model[0], "--json")  # any command finishes the purge first
    assert after.returncode == 0 and "finished an interrupted purge" in after.err, after.err
    assert [r["name"] for r in json.loads(after.out)] == ["kept"]
    objects = _all_objects(store.root)
    assert leaked.blob not in objects and "params/leaky.json" not in objects and kept.blob in objects
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert checking.check(store).ok
