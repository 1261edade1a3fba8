"""Parametric memory end to end: `memos learn` trains a real LoRA adapter on the real Gemma 3 270M,
`memos chat` routes it, and the store keeps it in history (blobs checked, purged with their sources)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_clean_failure, git, head

FACTS = [
    ("My dog is called Biscuit.", "What is my dog's name?", "Biscuit"),
    ("I work at Quillfeather Labs.", "Where do I work?", "Quillfeather Labs"),
    ("My favourite colour is teal.", "What is my favourite colour?", "teal"),
]
FAST = ("--steps", "80", "--general", "4", "--variants", "0")  # enough for three facts; the benchmark uses the defaults


def _import_facts(cli, root: Path) -> list[str]:
    lines = "\n".join(json.dumps({"text": t, "kind": "fact", "meta": {"question": q, "answer": a}})
                      for t, q, a in FACTS)
    done = cli("import", "-", "--json", input=lines, store=root)
    assert done.returncode == 0, done.err
    return json.loads(done.out)["ids"]


@pytest.fixture(scope="module")
def learned() -> dict:
    """A store with three facts learned into adapter `facts`, made once for the whole test session
    (learning takes a while): xdist workers share it through the session's model cache, under a
    file lock. Tests read it as it is, or copy it before they change anything."""
    import fcntl
    import os
    import subprocess
    import sys

    shared = Path(os.environ["MEMOS_CACHE"]) / "test-learned"
    root = shared / "store"

    def cli(*args: str, input: str | None = None, store: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(store or root), *args],
                              input=input.encode() if input else None, capture_output=True, timeout=600)
        done.out = done.stdout.decode()  # type: ignore[attr-defined]
        done.err = done.stderr.decode()  # type: ignore[attr-defined]
        return done

    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = shared / "made.json"
        if not made.exists():
            ids = _import_facts(cli, root)
            done = cli("learn", "facts", "--kind", "fact", *FAST, "--json")
            assert done.returncode == 0, done.err
            made.write_text(json.dumps({"ids": ids, "record": json.loads(done.out)}))
        info = json.loads(made.read_text())
    return {"root": root, "ids": info["ids"], "record": info["record"], "cli": cli}


@pytest.mark.slow
def test_learn_saves_an_enabled_adapter_in_one_commit(learned: dict) -> None:
    record, root = learned["record"], learned["root"]
    assert record["kind"] == "lora" and record["enabled"] is True
    assert record["report"]["gate"]["passed"], record["report"]
    assert record["report"]["units_reproduced"] == 3
    assert {s["id"] for s in record["sources"]} == set(learned["ids"])
    assert record["model"]["arch"] == "gemma3" and len(record["model"]["sha256"]) == 64
    blob = root / "params" / "blobs" / f"{record['blob']}.safetensors"
    assert blob.is_file() and 100_000 < blob.stat().st_size < 1_000_000
    assert git(root, "log", "-1", "--format=%s").startswith("learn: LoRA adapter facts")
    assert git(root, "ls-files", "params/").split() == [f"params/blobs/{record['blob']}.safetensors",
                                                         "params/facts.json"]
    check = learned["cli"]("check", "--json")
    assert check.returncode == 0, check.out + check.err


@pytest.mark.slow
def test_chat_routes_the_adapter_to_questions_about_what_it_learned(learned: dict) -> None:
    cli = learned["cli"]
    questions = "\n".join(json.dumps({"q": q}) for q in (
        "What is my dog's name?", "Where do I work?", "What is the capital of France?"))
    done = cli("chat", "--batch", "-", "--no-recall", "--temperature", "0", "--no-save", "--max-tokens", "12",
               input=questions)
    assert done.returncode == 0, done.err
    answers = [json.loads(line) for line in done.out.splitlines()]
    assert "biscuit" in answers[0]["answer"].lower()
    assert "quillfeather" in answers[1]["answer"].lower()
    assert answers[0]["parametric"][0]["applied"] and answers[0]["parametric"][0]["name"] == "facts"
    assert answers[0]["memories"] == []  # closed book: what it knows came from the adapter
    unrelated = answers[2]["parametric"][0]
    assert not unrelated["applied"] and unrelated["why"]
    base = cli("chat", "What is my dog's name?", "--no-recall", "--temperature", "0", "--no-save", "--no-param",
               "--max-tokens", "12", "--json")
    assert base.returncode == 0, base.err
    out = json.loads(base.out)
    assert out["parametric"] == [] and "biscuit" not in out["answer"].lower()


@pytest.mark.slow
def test_scale_zero_gives_the_tokens_of_no_adapter(learned: dict) -> None:
    from memos_cli.models.generator import load_generator
    from memos_cli.parametric.learn import Teacher
    from memos_cli.store import params
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(learned["root"])
    record = params.get(store, "facts")
    tensors, meta = params.decode_blob(params.read_blob(store, record))
    with load_generator(None, n_ctx=1024) as gen:
        adapter = gen.load_lora(tensors, float(meta["alpha"]), "facts")
        prompt = Teacher(gen).question("What is my dog's name?")

        def answer(loras: list) -> str:
            gen.use_loras(loras)
            return "".join(gen.stream(prompt, temperature=0.0, max_tokens=12))

        plain = answer([])
        assert answer([(adapter, 0.0)]) == plain
        assert "Biscuit" in answer([(adapter, 1.0)]) and "Biscuit" not in plain


@pytest.mark.slow
def test_the_same_units_options_and_seed_give_the_same_adapter(learned: dict) -> None:
    from memos_cli.models.generator import load_generator
    from memos_cli.parametric.learn import learn, to_record
    from memos_cli.parametric.lora import LoraOptions
    from memos_cli.store.store import MemoryStore

    units = MemoryStore(learned["root"]).get_many(learned["ids"])
    with load_generator(None, n_ctx=1024) as gen:

        def blob(seed: int) -> bytes:
            done = learn(gen, units, LoraOptions(steps=5, general=2, variants=0, seed=seed))
            return to_record("quick", "default", gen, units, done, enabled=False, report={})[1]

        first, again, other = blob(0), blob(0), blob(1)
    assert first == again != other


@pytest.mark.slow
def test_statuses_follow_the_source_units(learned: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    cli = learned["cli"]
    listed = json.loads(cli("param", "list", "--json", store=root).out)
    assert [(p["name"], p["status"]) for p in listed] == [("facts", "current")]
    uid = learned["ids"][0]
    assert cli("edit", uid, "--text", "My dog is called Pretzel.", store=root).returncode == 0
    listed = json.loads(cli("param", "list", "--json", store=root).out)
    assert listed[0]["status"] == "stale" and uid in listed[0]["reason"]


@pytest.mark.slow
def test_purge_of_a_source_removes_the_adapter_from_history(learned: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    cli = learned["cli"]
    sha = learned["record"]["blob"]
    done = cli("purge", learned["ids"][1], "--yes", "--json", store=root)
    assert done.returncode == 0, done.err
    assert not (root / "params" / "facts.json").exists()
    objects = git(root, "rev-list", "--all", "--objects")
    assert f"{sha}.safetensors" not in objects and "params/facts.json" not in objects


@pytest.mark.slow
def test_bad_input_gets_one_line_and_changes_nothing(learned: dict, tmp_path: Path) -> None:
    cli, root = learned["cli"], learned["root"]
    before = head(root)
    ask = ("chat", "hi", "--no-recall", "--no-save", "--max-tokens", "4")
    assert_clean_failure(cli(*ask, "--param", "nope"), root, before, "no parametric memory named nope")
    assert_clean_failure(cli(*ask, "--param", "facts=lots"), root, before, "use a number")
    assert_clean_failure(cli("learn", "x"), root, before, "say which units")
    assert_clean_failure(cli("learn", "x", "--tag", "absent"), root, before, "no units selected")
    assert_clean_failure(cli("learn", "x", "01zzzzzzzzzzzz"), root, before, "no unit")
    assert_clean_failure(cli("learn", "facts", "--kind", "fact"), root, before, "--replace")
    bad_model = tmp_path / "model.gguf"
    bad_model.write_bytes(b"not a model at all")
    assert_clean_failure(cli("learn", "x", "--all", "--model", str(bad_model)), root, before, "not a GGUF")
    assert_clean_failure(cli("learn", "x", "--all", "--rank", "0"), root, before, "")
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"a": "no question"}\n')
    assert_clean_failure(cli("learn", "x", "--all", "--eval", str(probes)), root, before, "no question")


@pytest.mark.slow
def test_a_damaged_or_foreign_blob_is_refused_by_chat(learned: dict, tmp_path: Path) -> None:
    import shutil

    cli = learned["cli"]
    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    record_path = root / "params" / "facts.json"
    record = json.loads(record_path.read_text())
    record["model"]["sha256"] = "0" * 64
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    git(root, "commit", "-qam", "hand edit: another model")
    before = head(root)
    assert_clean_failure(cli("chat", "hi", "--no-recall", "--no-save", "--param", "facts", store=root),
                         root, before, "made for another model")
    # enabled (not named): left out with a notice, and the chat goes on
    done = cli("chat", "hi", "--no-recall", "--no-save", "--max-tokens", "4", "--json", store=root)
    assert done.returncode == 0 and "made for another model" in done.err

    blob = root / "params" / "blobs" / f"{learned['record']['blob']}.safetensors"
    shutil.copy(learned["root"] / "params" / "facts.json", record_path)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    git(root, "commit", "-qam", "hand edit: tampered blob")
    before = head(root)
    assert_clean_failure(cli("chat", "hi", "--no-recall", "--no-save", store=root), root, before, "damaged")
    assert cli("check", store=root).returncode != 0


@pytest.mark.slow
def test_ctrl_c_while_learning_leaves_the_store_as_it_was(learned: dict, tmp_path: Path) -> None:
    import shutil
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    before = head(root)
    proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "learn", "again", "--all",
                             "--steps", "100000", "--general", "2", "--variants", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)  # the model loaded, learning under way
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode()
    assert head(root) == before
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (root / "params" / "again.json").exists()


@pytest.mark.slow
def test_consolidate_reports_stale_adapters_and_relearns_them_when_asked(learned: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    cli = learned["cli"]
    uid = learned["ids"][2]
    assert cli("edit", uid, "--text", "My favourite colour is ochre.", "--meta", "answer=ochre",
               store=root).returncode == 0
    done = cli("consolidate", "--json", store=root)
    assert done.returncode == 0, done.err
    stale = json.loads(done.out)["parametric"]
    assert [(p["name"], p["status"], p["action"]) for p in stale] == [("facts", "stale", "reported")]
    assert cli("config", "set", "consolidate.parametric.relearn", "true", store=root).returncode == 0
    done = cli("consolidate", "--json", store=root)
    assert done.returncode == 0, done.err
    [entry] = json.loads(done.out)["parametric"]
    assert entry["action"].startswith("relearned from 3 units"), entry
    listed = json.loads(cli("param", "list", "--json", store=root).out)
    assert [(p["name"], p["status"]) for p in listed] == [("facts", "current")]
    answer = cli("chat", "What is my favourite colour?", "--no-recall", "--temperature", "0", "--no-save",
                 "--max-tokens", "8", "--json", store=root)
    assert "ochre" in json.loads(answer.out)["answer"].lower()


@pytest.mark.slow
def test_eval_reports_probes_with_and_without_the_adapter(learned: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(learned["root"], root)
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"q": "What is my dog called?", "a": "Biscuit"}\n{"q": "What is the capital of Italy?"}\n')
    done = learned["cli"]("learn", "probed", "--kind", "fact", *FAST, "--eval", str(probes), "--json", store=root)
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    report = out["report"]["eval"]
    assert report["answerable"] == 1 and report["answered_base"] == 0 and report["answered"] == 1
    assert report["unrelated"] == 1 and report["routed_unrelated"] == 0 and report["unrelated_unchanged"] == 1
    assert report["leaks"] == 0 and out["enabled"] and out["report"]["gate"]["passed"]
    assert [d["routed"] for d in out["eval_details"]] == [True, False]
