"""The Python API that scripts import (``memos_cli/__init__.py``): its example runs as written."""

from __future__ import annotations

import contextlib
import io
import textwrap
from pathlib import Path

import memos_cli


def _example() -> str:
    doc = memos_cli.__doc__ or ""
    lines = []
    for line in doc.split("::\n", 1)[1].splitlines():  # the indented block after "::"
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_packages_example_runs_on_a_new_store(tmp_path: Path) -> None:
    code = _example()
    assert 'MemoryStore("~/.memos")' in code and "store.recall(" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace('"~/.memos"', repr(str(tmp_path / "store"))), {})  # noqa: S102 - our own docstring
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("Alice moved to Lisbon in March 2023.") and lines[-1] == "True"


def test_every_exported_name_resolves() -> None:
    for name in memos_cli.__all__:
        assert getattr(memos_cli, name) is not None
