"""Shared fixtures: real models, real LanceDB on disk, real git; nothing mocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# One model cache for the whole session (the embedding model is converted once),
# kept away from the user's own ~/.cache/memos unless the caller chose one.
_CACHE = os.environ.get("MEMOS_CACHE") or tempfile.mkdtemp(prefix="memos-test-cache-")
os.environ["MEMOS_CACHE"] = _CACHE
os.environ["MEMOS_USER"] = "tester"
# Tests in parallel (xdist workers): one llama.cpp thread each, as their spinning threads would
# otherwise wait on each other's cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("MEMOS_THREADS", "1")
os.environ.pop("MEMOS_HOME", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only the session that made it: an xdist worker shares it (inherited in MEMOS_CACHE), and one
    # that finishes first must not remove it under the others.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if _CACHE.startswith(tempfile.gettempdir()) and "memos-test-cache-" in _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def embedder():
    from memos_cli.models.embedder import Embedder
    from memos_cli.models.registry import default_embedding_model_path

    return Embedder(default_embedding_model_path())


@pytest.fixture
def store(tmp_path: Path, embedder):
    from memos_cli.store.store import MemoryStore

    s = MemoryStore(tmp_path / "store", embedder=embedder)
    s.init()
    return s


def git(root: Path, *args: str) -> str:
    # As a user whose files are private (umask 077): a hand commit's .git/COMMIT_EDITMSG is not opened to others
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          umask=0o077).stdout


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


def commit_count(root: Path) -> int:
    return int(git(root, "rev-list", "--count", "HEAD"))


Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(tmp_path: Path) -> Runner:
    """Run the real CLI in a subprocess against ``tmp_path/store`` (or ``store=``)."""

    def run(*args: str, input: bytes | str | None = None, store: Path | str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        where = str(store if store is not None else tmp_path / "store")
        data = input.encode() if isinstance(input, str) else input
        done = subprocess.run(
            [sys.executable, "-m", "memos_cli", "--store", where, *args],
            input=data, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})},
        )
        done.out = done.stdout.decode("utf-8", "replace")  # type: ignore[attr-defined]
        done.err = done.stderr.decode("utf-8", "replace")  # type: ignore[attr-defined]
        return done

    return run


def assert_clean_failure(done: subprocess.CompletedProcess, root: Path | None = None,
                         before: str | None = None, match: str = "") -> None:
    """One line on stderr, non-zero exit, no traceback, and the store as it was."""
    err = done.err  # type: ignore[attr-defined]
    assert done.returncode != 0, f"expected failure, got 0: {done.out!r}"  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("memos: error: "), lines[0]
    assert match.lower() in lines[0].lower(), lines[0]
    if root is not None and before is not None:
        assert head(root) == before, "a failed command changed history"
        assert git(root, "status", "--porcelain", "--untracked-files=all") == "", "a failed command left changes"
