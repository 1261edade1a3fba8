"""Steering vectors (`memos steer`), with the real Gemma 3 270M and real blobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import assert_clean_failure, commit_count, git, head

POS = ["I love this, it is wonderful and makes me so happy.", "What a beautiful day, everything is going great!"]
NEG = ["I hate this, it is awful and makes me so sad.", "What a miserable day, everything is going wrong!"]
PROBE = "How was your day?"


@pytest.fixture(scope="module")
def generator():
    from memos_cli.models.generator import load_generator

    with load_generator(None, n_ctx=1024) as gen:
        yield gen


@pytest.fixture(scope="module")
def direction(generator) -> np.ndarray:
    from memos_cli.parametric import steer

    return steer.build(generator, POS, NEG, steer.default_layers(generator.n_layer))


@pytest.fixture
def texts(tmp_path: Path) -> tuple[str, str]:
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.jsonl"
    pos.write_text("\n".join(POS) + "\n\n", encoding="utf-8")  # a blank line is skipped
    neg.write_text("".join(json.dumps({"text": t}) + "\n" for t in NEG), encoding="utf-8")
    return str(pos), str(neg)


# ---- the library ---------------------------------------------------------------------------------


def test_build_zero_outside_the_layers_and_the_same_texts_give_the_same_vector(generator, direction) -> None:
    from memos_cli.parametric import steer

    assert steer.default_layers(generator.n_layer) == (4, 11)  # Gemma 3 270M has 18 layers
    assert direction.shape == (generator.n_layer - 1, generator.n_embd) and direction.dtype == np.float32
    norms = np.linalg.norm(direction, axis=1)
    assert (norms[3:11] > 0).all()  # rows 3..10 are layers 4..11
    assert not norms[:3].any() and not norms[11:].any()
    # Unequal counts are fine; the same texts give the same bytes.
    again = steer.build(generator, POS, NEG[:1], (4, 5))
    assert np.linalg.norm(again, axis=1)[3:5].all() and not np.delete(again, [3, 4], axis=0).any()
    assert np.array_equal(steer.build(generator, POS, NEG[:1], (4, 5)), again)


def test_build_refuses_bad_input(generator) -> None:
    from memos_cli.errors import UsageError
    from memos_cli.parametric import steer

    for pos, neg, layers, match in (([], NEG, (4, 11), "at least one positive"),
                                    (POS, ["  "], (4, 11), "negative text 1 is empty"),
                                    (POS, NEG, (0, 3), "bad layers 0-3"),
                                    (POS, NEG, (4, 18), "steerable layers are 1-17"),
                                    (POS, POS, (4, 11), "same hidden states")):
        with pytest.raises(UsageError, match=match):
            steer.build(generator, pos, neg, layers)
    with pytest.raises(UsageError, match="the first layer is after the last"):
        steer.parse_layers("11-4")
    assert steer.parse_layers("6") == (6, 6) and steer.parse_layers("4-11") == (4, 11)


def test_strength_zero_gives_the_same_tokens_as_no_vector(generator, direction) -> None:
    from memos_cli.models.adapters import set_control
    from memos_cli.parametric import steer
    from memos_cli.parametric.learn import Teacher

    tokens = Teacher(generator).question(PROBE)
    generator.set_steering(None)
    base = steer.answer(generator, tokens, 16)  # greedy, as chat decodes it
    with steer.steering(generator, direction, 0.0):
        zero = steer.answer(generator, tokens, 16)
    with steer.steering(generator, direction, 2.0):
        strong = steer.answer(generator, tokens, 16)
    assert base.strip() and zero == base
    assert strong != base  # and the vector does something
    # Exactly: the logits over the whole vocabulary are the same bits with a zero vector and with none.
    capture = generator.capture({}, n_ctx=256)
    try:
        set_control(generator.lib, capture.ctx, direction * 0, generator.n_embd)
        _, with_zero = capture.run(tokens, [len(tokens) - 1])
        set_control(generator.lib, capture.ctx, None, generator.n_embd)
        _, without = capture.run(tokens, [len(tokens) - 1])
    finally:
        capture.close()
    assert np.array_equal(with_zero, without)


def test_calibrate_stops_at_the_first_strength_that_breaks_an_answer(generator, direction) -> None:
    from memos_cli.errors import UsageError
    from memos_cli.parametric import steer

    strength, table = steer.calibrate(generator, direction, [PROBE], ladder=(0.125, 8.0, 0.25), max_tokens=12)
    assert strength == 0.25 and [r["strength"] for r in table] == [0.0, 0.125, 0.25, 8.0]
    assert table[-1]["ok"] is False and table[-1]["failed"][0]["probe"] == PROBE
    assert table[0]["break"] < table[1]["break"] < table[2]["break"] <= steer.BREAK_LIMIT  # it rises with strength
    assert generator.identity.steering == ""  # nothing left set
    # An expected answer is checked only when the untouched model gives it.
    bees = "What do bees make?"
    strength, table = steer.calibrate(generator, direction, [(bees, "honey"), (bees, "zebra")], ladder=(0.125,),
                                      max_tokens=12)
    assert strength == 0.125 and table[0]["strength"] == 0.0 and table[1]["ok"]
    assert [f["why"] for f in table[0]["failed"]] == ["does not say 'zebra' even unsteered; not checked"]
    with pytest.raises(UsageError, match="even at strength 8"):
        steer.calibrate(generator, direction, [PROBE], ladder=(8.0,), max_tokens=12)


def test_problem_names_what_is_wrong_with_an_answer() -> None:
    from memos_cli.parametric.steer import problem

    assert problem(" I had a lovely day at the park.") is None
    assert problem("  \n ") == "empty"
    assert problem(" ... !!") == "no letters or digits"
    assert problem("  Lind\ufeff   \ufeff     \ufeff\n\n  \ufeff  ") == "mostly blank or invisible characters"
    assert problem("     \u2600\ufe0fwyn\U0001f60d   sunny\U0001f31e\u2728    Water") == "runs of spaces"  # strength 8
    assert problem(" Sure:\n    indented code\n") is None
    assert problem(" versatile sunny lush versatile versatile versatile") == "repeats itself"
    assert problem(" I am happy. I am happy. I am happy. I am happy.") == "repeats itself"
    assert problem(" The capital of Japan is Tokyo.", "tokyo") is None
    assert problem(" Thank you for your beautiful photos!", "Tokyo") == "does not say 'Tokyo'"


def test_score_moves_with_strength(generator, direction) -> None:
    from memos_cli.parametric import steer

    low, zero, high = steer.score(generator, direction, [-1.0, 0.0, 0.25], probes=[PROBE, "Describe the weather today."])
    assert low < zero < high
    assert steer.tone("A wonderful, happy day; not bad.") == 1


def test_parse_texts_and_probes() -> None:
    from memos_cli.errors import UsageError
    from memos_cli.parametric.steer import parse_probes, parse_texts

    assert parse_texts("a\n\n b \n", "f") == ["a", "b"]
    assert parse_probes('{"q": "why?", "a": "because"}\n{"q": "how?"}\n', "f") == [("why?", "because"), ("how?", None)]
    assert parse_probes("why?\n", "f") == [("why?", None)]
    with pytest.raises(UsageError, match='f line 1: "a" must be a non-empty string'):
        parse_probes('{"q": "why?", "a": 3}\n', "f")
    for content, match in (("\n \n", "f has no texts"), ('{"text": "a"}\nplain\n', "f line 2: not valid JSON"),
                           ('{"text": ""}\n', 'f line 1: needs a non-empty "text"')):
        with pytest.raises(UsageError, match=match):
            parse_texts(content, "f")


# ---- the CLI ---------------------------------------------------------------------------------------


def test_cli_saves_a_vector_in_one_commit(store, cli, texts) -> None:
    from memos_cli.parametric import steer
    from memos_cli.store import params

    pos, neg = texts
    before = commit_count(store.root)
    done = cli("steer", "Cheerful", "--pos", pos, "--neg", neg, "--strength", "-0.5", "--layers", "5-9", "--json")
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    assert out["name"] == "cheerful" and out["scale"] == -0.5 and out["enabled"] and out["commit"] == head(store.root)
    assert commit_count(store.root) == before + 1
    assert git(store.root, "status", "--porcelain", "--untracked-files=all") == ""

    shown = cli("param", "show", "cheerful", "--json")
    assert shown.returncode == 0, shown.err
    row = json.loads(shown.out)
    assert row["kind"] == "steer" and row["scale"] == -0.5 and row["status"] == "current" and row["sources"] == []
    tensors, meta = params.decode_blob(params.read_blob(store, params.get(store, "cheerful")))
    assert meta["layers"] == "5-9" and meta["kind"] == "steer"
    d = tensors["direction"]
    assert d.shape == (17, 640) and np.linalg.norm(d, axis=1)[4:9].all() and not np.delete(d, range(4, 9), 0).any()

    # The same name again: refused without --replace (before the model loads), replaced with it.
    before = head(store.root)
    assert_clean_failure(cli("steer", "cheerful", "--pos", pos, "--neg", neg, "--strength", "1"),
                         store.root, before, "exists; use --replace")
    done = cli("steer", "cheerful", "--pos", pos, "--neg", neg, "--strength", "0.5", "--disabled", "--replace")
    assert done.returncode == 0 and "strength 0.5 (as given)" in done.out and "disabled" in done.out, done.err
    record = params.get(store, "cheerful")
    assert record.scale == 0.5 and not record.enabled and record.hparams["layers"] == steer.layers_text((4, 11))


def test_cli_builds_from_tagged_memories(store, cli) -> None:
    from memos_cli.store import params

    ups = [store.add(t, tags=["upbeat"], cube="work") for t in POS]
    downs = [store.add(t, tags=["downbeat"], cube="work") for t in NEG]
    store.add("Not tagged at all.", cube="work")
    done = cli("steer", "mood", "--pos-tag", "upbeat", "--neg-tag", "downbeat", "--cube", "work",
               "--strength", "0.3", "--json")
    assert done.returncode == 0, done.err
    record = params.get(store, "mood")
    assert record.cube == "work" and record.kind == "steer"
    assert sorted(s["id"] for s in record.sources) == sorted(u.id for u in ups + downs)
    assert record.hparams["pos"] == {"tag": "upbeat", "texts": 2, "sha256": record.hparams["pos"]["sha256"]}
    # A changed source makes it stale.
    store.edit(ups[0].id, {"text": "I am thrilled, this is marvellous."})
    assert json.loads(cli("param", "show", "mood", "--json").out)["status"] == "stale"


def test_cli_bad_input_is_one_line_and_changes_nothing(store, cli, texts, tmp_path: Path) -> None:
    pos, neg = texts
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    store.add("Only a happy note.", tags=["happy"])
    before = head(store.root)
    for args, match in (
        (["--pos", str(tmp_path / "missing.txt"), "--neg", neg], "no such file"),
        (["--pos", str(empty), "--neg", neg], "has no texts"),
        (["--neg", neg], "give --pos FILE or --pos-tag TAG"),
        (["--pos", pos, "--pos-tag", "happy", "--neg", neg], "give --pos FILE or --pos-tag TAG"),
        (["--pos", pos, "--neg", neg, "--layers", "eleven"], "bad layers"),
        (["--pos", pos, "--neg", neg, "--layers", "11-4"], "first layer is after the last"),
        (["--pos", pos, "--neg", neg, "--strength", "strong"], "bad strength 'strong': use a number"),
        (["--pos", pos, "--neg", neg, "--strength", "nan"], "bad strength"),
        (["--pos", pos, "--neg", neg, "--strength", "1", "--probe", pos], "--probe is for calibrating"),
        (["--pos-tag", "happy", "--neg-tag", "nosuchtag"], "no memories tagged 'nosuchtag'"),
        (["--pos-tag", "happy", "--neg-tag", "happy"], "the same tag"),
        (["--pos", pos, "--neg", neg, "--model", str(tmp_path / "missing.gguf")], "not found"),
        (["--pos", pos, "--neg", neg, "--layers", "4-18", "--strength", "1"], "steerable layers are 1-17"),
    ):
        assert_clean_failure(cli("steer", "bad", *args), store.root, before, match)
    assert_clean_failure(cli("steer", "Bad Name", "--pos", pos, "--neg", neg), store.root, before, "bad name")


def test_cli_calibrates_on_a_probe_file(store, cli, texts, tmp_path: Path) -> None:
    from memos_cli.store import params

    pos, neg = texts
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"q": PROBE}) + "\n", encoding="utf-8")
    # Layers 6-16 make a vector strong enough to break the answer early on the ladder (at 0.25 here),
    # which keeps the test short; what is checked holds wherever it breaks.
    done = cli("steer", "cheerful", "--pos", pos, "--neg", neg, "--probe", str(probes), "--layers", "6-16", "--json")
    assert done.returncode == 0, done.err
    out = json.loads(done.out)
    table = out["report"]["calibration"]
    assert out["report"]["calibrated"] and out["scale"] in [r["strength"] for r in table if r["ok"]]
    assert all(r["ok"] for r in table if r["strength"] <= out["scale"])
    assert out["hparams"]["calibration"]["probes"] == 1
    assert params.get(store, "cheerful").scale == out["scale"]
