"""Convert a sentence-transformers BERT checkpoint into a GGUF for llama.cpp.

This mirrors what llama.cpp's ``convert_hf_to_gguf.py`` does for ``BertModel``
(architecture ``bert``, WordPiece vocabulary in the "phantom space" form, mean
pooling, non-causal attention) but needs only ``gguf``, ``numpy`` and
``safetensors``: no torch, no transformers, no network.

``gguf`` and ``safetensors`` are imported inside the function so that importing
this module costs nothing at CLI start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memos_cli.errors import ModelError

# Tensors the embedding model does not use (the MLM/NSP heads and the pooler).
_SKIPPED_PREFIXES = ("pooler.", "cls.predictions", "cls.seq_relationship")
_SKIPPED_NAMES = ("embeddings.position_ids",)

# sentence-transformers pooling config -> gguf pooling type name.
_POOLING_MODES = {
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_lasttoken": "LAST",
}

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ModelError(f"model file missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"unexpected content in {path}")
    return data


def _read_vocab(path: Path) -> list[str]:
    """One token per line. Split on "\\n" only: str.splitlines() would also
    split on characters such as U+0085 that may be tokens themselves."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def _pooling_type(model_dir: Path) -> str:
    """Pooling from the sentence-transformers config; MEAN when absent
    (all-MiniLM-L6-v2 uses mean pooling)."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return "MEAN"
    with modules_path.open(encoding="utf-8") as fh:
        modules = json.load(fh)
    for module in modules:
        if module.get("type") == "sentence_transformers.models.Pooling":
            cfg = _read_json(model_dir / module.get("path", "") / "config.json")
            for key, name in _POOLING_MODES.items():
                if cfg.get(key):
                    return name
            raise ModelError(f"unsupported pooling mode in {model_dir}")
    return "MEAN"


def _hf_tensor_name(name: str) -> str:
    # Same renames as llama.cpp's BertModel: drop a "bert." prefix, old
    # gamma/beta LayerNorm names.
    if name.startswith("bert."):
        name = name[5:]
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    return name


def convert_bert_to_gguf(model_dir: Path, out_path: Path, *, f16: bool = True) -> None:
    """Write ``out_path`` as a llama.cpp BERT embedding GGUF built from the
    sentence-transformers checkpoint in ``model_dir`` (config.json,
    model.safetensors, vocab.txt, optional tokenizer_config.json/modules.json).

    With ``f16`` the 2-D matrices (token embeddings, attention and
    feed-forward weights) are stored as float16, as llama.cpp's converter does
    by default; biases, norms, position and token-type embeddings stay f32.
    ``out_path`` is written in place: callers that need atomicity write to a
    temporary name and rename.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise ModelError(f"not a BERT model: {model_dir} (model_type={config.get('model_type')!r})")

    try:
        n_layer = int(config["num_hidden_layers"])
        n_embd = int(config["hidden_size"])
        n_head = int(config["num_attention_heads"])
        n_ff = int(config["intermediate_size"])
        n_ctx = int(config.get("max_position_embeddings", 512))
        eps = float(config.get("layer_norm_eps", 1e-12))
        n_token_types = int(config.get("type_vocab_size", 2))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"incomplete BERT config in {model_dir}: {exc}") from None

    vocab = _read_vocab(model_dir / "vocab.txt")
    token_ids = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in _SPECIAL_TOKENS if t not in token_ids]
    if missing:
        raise ModelError(f"vocab.txt lacks special tokens: {', '.join(missing)}")
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    if tok_cfg.get("do_lower_case") is False:
        # llama.cpp's WPM tokenizer always lower-cases (uncased BERT only).
        raise ModelError(f"cased BERT vocabularies are not supported: {model_dir}")

    try:
        weights = load_file(str(model_dir / "model.safetensors"))
    except FileNotFoundError:
        raise ModelError(f"model file missing: {model_dir / 'model.safetensors'}") from None
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"cannot read {model_dir / 'model.safetensors'}: {exc}") from None

    word_embd = weights.get("embeddings.word_embeddings.weight", weights.get("bert.embeddings.word_embeddings.weight"))
    if word_embd is None or word_embd.shape[0] != len(vocab):
        raise ModelError(f"vocab.txt does not match the embedding matrix in {model_dir}")

    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        # -- hyper-parameters (TextModel.set_gguf_parameters + BertModel) --
        writer.add_name(model_dir.name.split("__")[-1])
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_layer_norm_eps(eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType[_pooling_type(model_dir)])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

        # -- vocabulary (BertModel.set_vocab) --
        # Special tokens are CONTROL and kept verbatim; every other token is
        # NORMAL and rewritten to llama.cpp's phantom-space form: a word-start
        # piece gets a leading U+2581, a "##" continuation loses its "##".
        toktypes: list[int] = []
        tokens: list[str] = []
        for tok in vocab:
            if tok in _SPECIAL_TOKENS:
                toktypes.append(gguf.TokenType.CONTROL)
                tokens.append(tok)
            else:
                toktypes.append(gguf.TokenType.NORMAL)
                tokens.append(tok[2:] if tok.startswith("##") else "\u2581" + tok)
        writer.add_tokenizer_model("bert")
        # The WordPiece tokenizer in llama.cpp ignores the pre-tokenizer name.
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(toktypes)
        writer.add_token_type_count(n_token_types)
        # What gguf.SpecialVocab derives from this model's tokenizer files for
        # the llama.cpp converter: [CLS] is BOS, [SEP] is EOS and SEP; the
        # "[CLS] $A [SEP]" template gives add_bos/add_eos, no separate add_sep
        # (so exactly one [SEP] ends each sequence).
        writer.add_bos_token_id(token_ids["[CLS]"])
        writer.add_eos_token_id(token_ids["[SEP]"])
        writer.add_unk_token_id(token_ids["[UNK]"])
        writer.add_sep_token_id(token_ids["[SEP]"])
        writer.add_pad_token_id(token_ids["[PAD]"])
        writer.add_mask_token_id(token_ids["[MASK]"])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(True)
        writer.add_add_sep_token(False)

        # -- tensors --
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
        keep_f32 = ("position_embd.weight", "token_types.weight")
        for hf_name in sorted(weights):
            name = _hf_tensor_name(hf_name)
            if name in _SKIPPED_NAMES or name.startswith(_SKIPPED_PREFIXES):
                continue
            new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ModelError(f"unexpected tensor {hf_name!r} in {model_dir}")
            data = np.ascontiguousarray(weights[hf_name], dtype=np.float32)
            if f16 and data.ndim == 2 and new_name not in keep_f32:
                data = data.astype(np.float16)
            writer.add_tensor(new_name, data)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
