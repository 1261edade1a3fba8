"""The committed shell completion scripts: up to date, complete, and working in bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import pytest
import typer

from memos_cli.cli.completions import SCRIPT_FILES, SHELLS, completion_script, script_for

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
REGENERATE = "\n".join(f"  memos completions {shell} > completions/{SCRIPT_FILES[shell]}" for shell in SHELLS)


# A toy app for what no memos command has yet: an option with a fixed set of values.
class _Color(Enum):
    red = "red"
    dark_blue = "dark-blue"


_toy = typer.Typer(add_completion=False)


@_toy.callback()
def _toy_root() -> None:
    """A toy."""


@_toy.command()
def paint(color: Annotated[_Color, typer.Option("--color", "-c", help="Which [color]: it's 'nice'.")] = _Color.red,
          ) -> None:
    """Paint it."""


@_toy.command(hidden=True)
def secret() -> None:
    """Not offered."""


def _visible_commands() -> list[str]:
    from memos_cli.cli.app import app

    completion_script("bash")  # registers every command module
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="memos")
    names = [name for name in group.list_commands(ctx) if not group.get_command(ctx, name).hidden]
    assert names, "no visible commands found"
    return names


def _bash_complete(script: str, *words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY after sourcing ``script`` with the cursor on the last of ``words``."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()\n"
        "_memos\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          timeout=10, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_script_is_up_to_date(shell: str) -> None:
    path = COMPLETIONS / SCRIPT_FILES[shell]
    hint = f"\nRegenerate the completion scripts from the repository root:\n{REGENERATE}\n"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing.{hint}"
    assert path.read_text(encoding="utf-8") == completion_script(shell), (
        f"{path.relative_to(ROOT)} is out of date with the CLI's commands and options.{hint}"
    )


def test_cli_prints_the_committed_script() -> None:
    # Through the real entry point, which registers its own list of command modules.
    done = subprocess.run([sys.executable, "-m", "memos_cli", "completions", "bash"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (COMPLETIONS / SCRIPT_FILES["bash"]).read_text(encoding="utf-8"), (
        "`memos completions bash` differs from completion_script('bash'): does "
        "memos_cli/cli/completions.py import the same command modules as app.main()?"
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_every_visible_command_is_in_the_script(shell: str) -> None:
    text = (COMPLETIONS / SCRIPT_FILES[shell]).read_text(encoding="utf-8")
    missing = [name for name in _visible_commands() if name not in text]
    assert not missing, f"{SCRIPT_FILES[shell]} lacks {missing}"
    # How each script would offer the hidden `completions` command, were it there.
    offered = {"bash": "        completions)", "zsh": "'completions:", "fish": "-a completions"}[shell]
    assert offered not in text, "the hidden `completions` command must not be offered"


def test_bash_accepts_the_script() -> None:
    done = subprocess.run(["bash", "-n", str(COMPLETIONS / "memos.bash")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("shell", "check"), [("zsh", ["zsh", "-n"]), ("fish", ["fish", "-n"])])
def test_other_shells_accept_their_scripts(shell: str, check: list[str]) -> None:
    if shutil.which(check[0]) is None:
        pytest.skip(f"{check[0]} is not installed")
    done = subprocess.run([*check, str(COMPLETIONS / SCRIPT_FILES[shell])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bash_completes_commands_options_and_files(tmp_path: Path) -> None:
    script = str(COMPLETIONS / "memos.bash")
    assert _bash_complete(script, "memos", "rec") == ["recall"]
    assert "--batch" in _bash_complete(script, "memos", "recall", "--")
    assert _bash_complete(script, "memos", "--store", "x", "sta") == ["stats"]
    (tmp_path / "notes.jsonl").write_text("")
    assert _bash_complete(script, "memos", "import", "no", cwd=tmp_path) == ["notes.jsonl"]
    assert _bash_complete(script, "memos", "recall", "--batch", "no", cwd=tmp_path) == ["notes.jsonl"]


def test_choices_and_hidden_commands(tmp_path: Path) -> None:
    group = typer.main.get_command(_toy)
    for shell in SHELLS:
        text = script_for(group, shell)
        assert "dark-blue" in text and "secret" not in text, shell
    script = tmp_path / "toy.bash"
    script.write_text(script_for(group, "bash"))
    assert _bash_complete(str(script), "memos", "paint", "-c", "") == ["red", "dark-blue"]
    assert _bash_complete(str(script), "memos", "paint", "--color", "=", "d") == ["dark-blue"]


def test_unknown_shell_is_one_clean_line() -> None:
    done = subprocess.run([sys.executable, "-m", "memos_cli", "completions", "tcsh"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("memos: error:") and "tcsh" in lines[0], lines[0]
