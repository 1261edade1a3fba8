"""Steering vectors in `memos chat`: applied to every turn, scale 0 is no vector, and a KV cache
built without them is not loaded under them (the set of steering vectors is part of its identity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

POS = ["I love this, it is wonderful and makes me so happy.", "What a beautiful day, everything is great!",
       "Thank you so much, this is fantastic news."]
NEG = ["I hate this, it is awful and makes me miserable.", "What a terrible day, everything is going wrong.",
       "This is horrible news, I am so upset."]
ASK = ("chat", "How was your day?", "--no-recall", "--temperature", "0", "--no-save", "--max-tokens", "16", "--json")


@pytest.mark.slow
def test_steering_in_chat(cli, tmp_path: Path) -> None:
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("\n".join(POS) + "\n")
    neg.write_text("\n".join(NEG) + "\n")
    done = cli("add", "Alice likes green tea.", "--json")
    assert done.returncode == 0, done.err
    done = cli("steer", "tone", "--pos", str(pos), "--neg", str(neg), "--strength", "0.5", "--json")
    assert done.returncode == 0, done.err

    steered = cli(*ASK)
    assert steered.returncode == 0, steered.err
    out = json.loads(steered.out)
    assert [(p["name"], p["kind"], p["applied"]) for p in out["parametric"]] == [("tone", "steer", True)]
    plain = json.loads(cli(*ASK, "--no-param").out)
    assert plain["parametric"] == [] and plain["answer"] != out["answer"]

    # A KV cache built with no steering vector: loaded without one, not under one.
    uid = json.loads(cli("list", "--json").out)[0]["id"]
    assert cli("pin", uid).returncode == 0
    assert cli("kv", "build", "--pinned").returncode == 0
    ask = ("chat", "What does Alice drink?", "--temperature", "0", "--no-save", "--max-tokens", "8", "--json")
    unsteered = cli(*ask, "--no-param")
    assert json.loads(unsteered.out)["head"]["source"] == "kv", unsteered.err
    steered = cli(*ask)
    assert json.loads(steered.out)["head"]["source"] == "prefill"
    assert "steering" in steered.err, steered.err
