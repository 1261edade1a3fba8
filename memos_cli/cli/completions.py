"""``memos completions SHELL``: static completion scripts for bash, zsh and fish.

The scripts are generated from the click command tree behind the Typer app, so
they list exactly the commands and options the CLI has. They are static (no
call back into ``memos`` at TAB time, which would be slow): regenerate them
when a command or an option changes. ``tests/test_completions.py`` fails until
the committed copies in ``completions/`` match.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

from memos_cli.errors import UsageError

from .app import app

SHELLS = ("bash", "zsh", "fish")
PROG = "memos"

# Where each script goes in the repository (``completions/FILE``).
SCRIPT_FILES = {"bash": "memos.bash", "zsh": "_memos", "fish": "memos.fish"}

_FILE_METAVARS = {"FILE", "FILE|-", "PATH", "PATH|-"}
_DIR_METAVARS = {"DIR", "DIRECTORY"}


@dataclass(frozen=True)
class Values:
    """What to offer for a value: nothing, files, directories, or a fixed list."""

    kind: str  # "none", "file", "dir" or "choice"
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Opt:
    names: tuple[str, ...]  # "--tag", "-t"
    help: str
    takes_value: bool
    multiple: bool
    eager: bool  # --help, --version: they end the command line's meaning
    metavar: str
    values: Values


@dataclass(frozen=True)
class Arg:
    metavar: str
    nargs: int  # -1: any number
    values: Values


@dataclass(frozen=True)
class Cmd:
    name: str
    help: str
    options: tuple[Opt, ...]
    arguments: tuple[Arg, ...]


# -- reading the command tree -------------------------------------------------


def _load_commands() -> None:
    """Import the modules that register commands, as ``app.main()`` does."""
    from .app import load_commands

    load_commands()


def _first_line(text: str | None) -> str:
    text = (text or "").split("\f")[0].strip()  # click hides what follows \f from --help
    text = text.replace("\\[", "[")  # "\[" keeps rich's markup from eating "[chat]" in --help
    return " ".join(text.splitlines()[0].split()) if text else ""


def _choices(param: Any) -> tuple[str, ...] | None:
    # A click.Choice carries .choices on the type; Typer's own parameters (Enum or
    # Literal annotations) describe them on .type_descriptor instead.
    raw = getattr(getattr(param, "type", None), "choices", None)
    if raw is None:
        raw = getattr(getattr(param, "type_descriptor", None), "choices", None)
    if raw is None:
        return None
    return tuple(str(c.value) if isinstance(c, Enum) else str(c) for c in raw)


def _values(param: Any) -> Values:
    choices = _choices(param)
    if choices is not None:
        return Values("choice", choices)
    metavar = (param.metavar or "").upper()
    if metavar in _DIR_METAVARS:
        return Values("dir")
    if metavar in _FILE_METAVARS:
        return Values("file")
    # Parameters typed as paths or files, whatever their metavar says.
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and desc.is_path:
        return Values("dir" if desc.path_type == "dir" else "file")
    if desc is not None and desc.is_file:
        return Values("file")
    ptype = getattr(param, "type", None)
    if ptype is not None and type(ptype).__name__ == "Path":  # a plain click.Path
        return Values("dir" if not getattr(ptype, "file_okay", True) else "file")
    return Values("none")


def _read_params(command: Any, ctx: Any) -> tuple[tuple[Opt, ...], tuple[Arg, ...]]:
    options: list[Opt] = []
    arguments: list[Arg] = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            metavar = param.metavar or (param.name or "arg").upper()
            arguments.append(Arg(metavar, param.nargs, _values(param)))
        elif param.param_type_name == "option":
            takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
            # Long forms first, then short ones, each sorted: click builds the help
            # option's names from a set, so their declared order changes from run to run.
            names = tuple(sorted([*param.opts, *param.secondary_opts], key=lambda n: (not n.startswith("--"), n)))
            options.append(Opt(
                names=names,
                help=_first_line(param.help),
                takes_value=takes_value,
                multiple=bool(param.multiple),
                eager=bool(param.is_eager),
                metavar=param.metavar or (param.name or "value").upper(),
                values=_values(param) if takes_value else Values("none"),
            ))
    return tuple(options), tuple(arguments)


def _tree(group: Any) -> tuple[Cmd, list[Cmd]]:
    """The group itself (its options are the global ones) and its visible subcommands, by name."""
    # context_settings carry help_option_names (-h/--help); subcommand contexts inherit them.
    ctx = typer.Context(group, info_name=PROG, **group.context_settings)
    options, arguments = _read_params(group, ctx)
    root = Cmd(PROG, _first_line(group.help), options, arguments)
    commands = []
    for name in sorted(group.list_commands(ctx)):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = typer.Context(sub, parent=ctx, info_name=name, **sub.context_settings)
        options, arguments = _read_params(sub, sub_ctx)
        commands.append(Cmd(name, _first_line(sub.short_help or sub.help), options, arguments))
    return root, commands


# -- bash ---------------------------------------------------------------------


def _bash_words(words: list[str] | tuple[str, ...]) -> str:
    # The word list of ``compgen -W "..."``: escaped for double quotes and for the
    # second word splitting compgen itself does.
    out = []
    for word in words:
        word = re.sub(r'([\\"$`])', r"\\\1", word)
        out.append(word.replace(" ", "\\\\ "))
    return " ".join(out)


def _bash_values(values: Values, indent: str) -> str:
    if values.kind == "file":
        return f'{indent}_memos_files "$cur"'
    if values.kind == "dir":
        return f'{indent}_memos_dirs "$cur"'
    if values.kind == "choice":
        return f'{indent}COMPREPLY=($(compgen -W "{_bash_words(values.choices)}" -- "$cur"))'
    return f"{indent}:  # a value with nothing to offer"


def _bash_prev_cases(options: tuple[Opt, ...], indent: str) -> list[str]:
    """``case "$prev"`` arms: after an option that takes a value, complete that value."""
    # Options wanting the same kind of value share one arm, in order of first appearance.
    groups: dict[Values, list[str]] = {}
    for opt in options:
        if opt.takes_value:
            groups.setdefault(opt.values, []).extend(opt.names)
    lines = []
    for values, names in groups.items():
        lines.append(f"{indent}{'|'.join(names)})")
        lines.append(_bash_values(values, indent + "    "))
        lines.append(f"{indent}    return 0 ;;")
    return lines


def _bash(root: Cmd, commands: list[Cmd]) -> str:
    global_value_opts = [n for o in root.options if o.takes_value for n in o.names]
    lines = [
        "# bash completion for memos                                 -*- shell-script -*-",
        "#",
        "# Generated by `memos completions bash` from the CLI's command tree; do not edit.",
        "# Install: memos completions bash > ~/.local/share/bash-completion/completions/memos",
        "",
        "_memos_files()",
        "{",
        "    local IFS=$'\\n'",
        "    compopt -o filenames 2>/dev/null",
        '    COMPREPLY=($(compgen -f -- "$1"))',
        "}",
        "",
        "_memos_dirs()",
        "{",
        "    local IFS=$'\\n'",
        "    compopt -o filenames 2>/dev/null",
        '    COMPREPLY=($(compgen -d -- "$1"))',
        "}",
        "",
        "_memos()",
        "{",
        "    local cur prev cmd word i",
        "    COMPREPLY=()",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev=""',
        '    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    # With the default COMP_WORDBREAKS, "--opt=value" arrives as "--opt" "=" "value".',
        '    if [[ $cur == "=" ]]; then',
        '        cur=""',
        '    elif [[ $prev == "=" ]] && (( COMP_CWORD > 1 )); then',
        '        prev="${COMP_WORDS[COMP_CWORD-2]}"',
        "    fi",
        "",
        "    # The subcommand: the first word that is neither an option nor an option's value.",
        '    cmd=""',
        "    i=1",
        "    while (( i < COMP_CWORD )); do",
        '        word="${COMP_WORDS[i]}"',
        '        case "$word" in',
    ]
    if global_value_opts:
        lines += [
            f"            {'|'.join(global_value_opts)})",
            "                i=$((i + 1))",
            '                [[ ${COMP_WORDS[i]} == "=" ]] && i=$((i + 1))',
            "                ;;",
        ]
    lines += [
        "            -*) ;;",
        '            *) cmd="$word"; break ;;',
        "        esac",
        "        i=$((i + 1))",
        "    done",
        "",
        '    if [[ -z $cmd ]]; then',
        '        case "$prev" in',
        *_bash_prev_cases(root.options, "            "),
        "        esac",
        '        if [[ $cur == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{_bash_words([n for o in root.options for n in o.names])}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "{_bash_words([c.name for c in commands])}" -- "$cur"))',
        "        fi",
        "        return 0",
        "    fi",
        "",
        '    case "$cmd" in',
    ]
    for cmd in commands:
        lines.append(f"        {cmd.name})")
        prev_cases = _bash_prev_cases(cmd.options, "                ")
        if prev_cases:
            lines += ['            case "$prev" in', *prev_cases, "            esac"]
        names = _bash_words([n for o in cmd.options for n in o.names])
        lines += [
            '            if [[ $cur == -* ]]; then',
            f'                COMPREPLY=($(compgen -W "{names}" -- "$cur"))',
        ]
        # Positional arguments: offer files or directories if any argument wants them.
        kinds = [a.values for a in cmd.arguments if a.values.kind != "none"]
        if kinds:
            lines += ["            else", _bash_values(kinds[0], "                ")]
        lines += ["            fi", "            ;;"]
    lines += [
        "    esac",
        "    return 0",
        "}",
        "",
        "complete -F _memos memos",
        "",
    ]
    return "\n".join(lines)


# -- zsh ----------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str) -> str:
    # Inside an _arguments [description]: brackets and backslashes are escaped.
    return re.sub(r"([\\\[\]])", r"\\\1", text)


def _zsh_message(text: str) -> str:
    return re.sub(r"([\\:])", r"\\\1", text)


def _zsh_action(values: Values) -> str:
    if values.kind == "file":
        return "_files"
    if values.kind == "dir":
        return "_directories"
    if values.kind == "choice":
        return "(" + " ".join(re.sub(r"([\\\s()'\":])", r"\\\1", c) for c in values.choices) + ")"
    return " "  # no completion; zsh shows the message


def _zsh_option_specs(options: tuple[Opt, ...]) -> list[str]:
    specs = []
    for opt in options:
        if opt.eager:
            exclude = "(- *)"  # --help, --version: nothing else makes sense with them
        elif opt.multiple:
            exclude = "*"
        elif len(opt.names) > 1:
            exclude = "(" + " ".join(opt.names) + ")"
        else:
            exclude = ""
        for name in opt.names:
            suffix = ("=" if name.startswith("--") else "+") if opt.takes_value else ""
            spec = f"{exclude}{name}{suffix}" + (f"[{_zsh_help(opt.help)}]" if opt.help else "")
            if opt.takes_value:
                spec += f":{_zsh_message(opt.metavar)}:{_zsh_action(opt.values)}"
            specs.append(_zsh_quote(spec))
    return specs


def _zsh_argument_specs(arguments: tuple[Arg, ...]) -> list[str]:
    specs = []
    for arg in arguments:
        star = "*" if arg.nargs < 0 else ""
        specs.append(_zsh_quote(f"{star}:{_zsh_message(arg.metavar)}:{_zsh_action(arg.values)}"))
    return specs


def _zsh(root: Cmd, commands: list[Cmd]) -> str:
    def args_block(specs: list[str], indent: str) -> list[str]:
        return [f"{indent}{spec} \\" for spec in specs]

    lines = [
        "#compdef memos",
        "",
        "# zsh completion for memos.",
        "# Generated by `memos completions zsh` from the CLI's command tree; do not edit.",
        "# Install: memos completions zsh > ~/.zfunc/_memos, with ~/.zfunc in $fpath before compinit.",
        "",
        "_memos() {",
        '  local curcontext="$curcontext" state line ret=1',
        "  typeset -A opt_args",
        "",
        "  _arguments -C \\",
        *args_block(_zsh_option_specs(root.options), "    "),
        "    '1: :_memos_commands' \\",
        "    '*:: :->args' && ret=0",
        "",
        "  case $state in",
        "    args)",
        '      curcontext="${curcontext%:*:*}:memos-$words[1]:"',
        "      case $words[1] in",
    ]
    for cmd in commands:
        specs = _zsh_option_specs(cmd.options) + _zsh_argument_specs(cmd.arguments)
        lines += [f"        {cmd.name})", "          _arguments \\", *args_block(specs, "            ")]
        lines[-1] = lines[-1][: -len(" \\")] + " && ret=0"
        lines.append("          ;;")
    lines += [
        "      esac",
        "      ;;",
        "  esac",
        "  return ret",
        "}",
        "",
        "_memos_commands() {",
        "  local -a commands",
        "  commands=(",
        *[f"    {_zsh_quote(_zsh_message(c.name) + ':' + c.help)}" for c in commands],
        "  )",
        "  _describe -t commands 'memos command' commands",
        "}",
        "",
        "# Autoloaded from $fpath: complete now; sourced by hand: register the function.",
        'if [[ $zsh_eval_context[-1] == loadautofunc ]]; then',
        '  _memos "$@"',
        "else",
        "  compdef _memos memos",
        "fi",
        "",
    ]
    return "\n".join(lines)


# -- fish ---------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_values(values: Values) -> str:
    if values.kind == "file":
        return " -r -F"
    if values.kind == "dir":
        return " -x -a '(__fish_complete_directories)'"
    if values.kind == "choice":
        words = " ".join(re.sub(r"([\\\s'\"$()*?{}\[\];&|<>#~])", r"\\\1", c) for c in values.choices)
        return f" -x -a {_fish_quote(words)}"
    return " -x"  # a value, but nothing to offer


def _fish_option(condition: str, opt: Opt) -> str:
    parts = [f"complete -c memos -n {_fish_quote(condition)}"]
    for name in opt.names:
        if name.startswith("--"):
            parts.append(f"-l {name[2:]}")
        elif len(name) == 2:
            parts.append(f"-s {name[1:]}")
        else:
            parts.append(f"-o {name[1:]}")  # an old-style long option such as -foo
    line = " ".join(parts)
    if opt.takes_value:
        line += _fish_values(opt.values)
    if opt.help:
        line += f" -d {_fish_quote(opt.help)}"
    return line


def _fish(root: Cmd, commands: list[Cmd]) -> str:
    global_value_opts = " ".join(n for o in root.options if o.takes_value for n in o.names)
    lines = [
        "# fish completion for memos.",
        "# Generated by `memos completions fish` from the CLI's command tree; do not edit.",
        "# Install: memos completions fish > ~/.config/fish/completions/memos.fish",
        "",
        "# The subcommand on the command line, if any: the first word that is neither",
        "# an option nor the value of a global option.",
        "function __memos_command",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        "    set -l skip 0",
        "    for token in $tokens",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        switch $token",
    ]
    if global_value_opts:
        lines += [f"            case {global_value_opts}", "                set skip 1"]
    lines += [
        "            case '-*'",
        "            case '*'",
        "                echo $token",
        "                return 0",
        "        end",
        "    end",
        "    return 1",
        "end",
        "",
        "function __memos_using",
        "    set -l cmd (__memos_command)",
        '    and test "$cmd" = "$argv[1]"',
        "end",
        "",
        "# No file names unless an option or argument asks for them.",
        "complete -c memos -f",
        "",
        "# Global options",
        *[_fish_option("not __memos_command", o) for o in root.options],
        "",
        "# Commands",
    ]
    for cmd in commands:
        line = f"complete -c memos -n 'not __memos_command' -a {cmd.name}"
        lines.append(line + (f" -d {_fish_quote(cmd.help)}" if cmd.help else ""))
    for cmd in commands:
        condition = f"__memos_using {cmd.name}"
        lines += ["", f"# memos {cmd.name}"]
        lines += [_fish_option(condition, o) for o in cmd.options]
        kinds = [a.values for a in cmd.arguments if a.values.kind != "none"]
        if kinds:
            lines.append(f"complete -c memos -n {_fish_quote(condition)}{_fish_values(kinds[0])}")
    lines.append("")
    return "\n".join(lines)


# -- entry points -------------------------------------------------------------

_GENERATORS = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script_for(group: Any, shell: str) -> str:
    """The completion script for ``shell`` describing the click group ``group``."""
    if shell not in _GENERATORS:
        raise UsageError(f"unknown shell {shell!r}: use one of {', '.join(SHELLS)}")
    root, commands = _tree(group)
    return _GENERATORS[shell](root, commands)


def completion_script(shell: str) -> str:
    """The completion script of the ``memos`` CLI for ``shell`` ("bash", "zsh" or "fish")."""
    _load_commands()
    return script_for(typer.main.get_command(app), shell)


@app.command(hidden=True)
def completions(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish.", show_default=False)],
) -> None:
    """Print a completion script for bash, zsh or fish.

    Examples:

      memos completions bash > ~/.local/share/bash-completion/completions/memos

      memos completions zsh > ~/.zfunc/_memos

      memos completions fish > ~/.config/fish/completions/memos.fish
    """
    sys.stdout.write(completion_script(shell))
