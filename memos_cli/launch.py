"""The ``memos`` command's entry point: what a running server can answer is sent to it before the CLI loads.

Loading the Typer app and its commands costs about 0.25 s; a script that
calls ``memos recall --json`` or ``memos add`` many times against a store
with ``memos serve`` running should not pay it. So ``main`` first tries
``quick``: it reads the command line with the standard library alone, and
when it is exactly ``recall ... --json`` or ``add ...`` with options it
knows, and a server answers for the store, it sends the request and prints
the answer as the full CLI would (the same JSON, the same id). Anything
else (another command or option, ``--no-server``, ``--help``, no server) goes
to the Typer app, unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_RECALL_VALUES = {"-k": "k", "--cube": "cube", "--kind": "kind", "--tag": "tags", "-t": "tags", "--since": "since",
                  "--until": "until", "--min-relevance": "min_relevance"}
_RECALL_FLAGS = {"--json": ("json", True), "--no-context": ("context", False), "--context": ("context", True),
                 "--pinned": ("pinned", True), "--unpinned": ("pinned", False)}
_ADD_VALUES = {"--kind": "kind", "--tag": "tags", "-t": "tags", "--cube": "cube", "--time": "time", "--ttl": "ttl",
               "--user": "user", "--meta": "meta", "-m": "meta", "--importance": "importance", "--privacy": "privacy"}
_ADD_FLAGS = {"--json": ("json", True), "--pin": ("pinned", True)}
_CHAT_VALUES = {"--cube": "cube", "--max-tokens": "max_tokens", "--temperature": "temperature", "-k": "k",
                "--budget": "budget", "--min-relevance": "min_relevance"}
_CHAT_FLAGS = {"--no-save": ("save", False)}
_TABLES = {"recall": (_RECALL_VALUES, _RECALL_FLAGS), "add": (_ADD_VALUES, _ADD_FLAGS), "chat": (_CHAT_VALUES, _CHAT_FLAGS)}


def _parse(args: list[str], values: dict[str, str], flags: dict[str, tuple[str, Any]]) -> tuple[list[str], dict[str, Any]] | None:
    """Positional words and options; None at anything not known (the full CLI then reads it)."""
    words: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            words += args[i + 1:]
            break
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name in flags and not eq:
                key, flag = flags[name]
                opts[key] = flag
            elif name in values:
                if not eq:
                    i += 1
                    if i >= len(args):
                        return None
                    value = args[i]
                key = values[name]
                if key in ("tags", "meta", "privacy"):
                    opts.setdefault(key, []).append(value)
                else:
                    opts[key] = value
            else:
                return None
        else:
            words.append(arg)
        i += 1
    return words, opts


def quick(argv: list[str]) -> int | None:
    """Answer the command through the store's server; its exit code, or None to leave it to the CLI."""
    store: str | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name not in ("--store", "-s"):
            return None
        if not eq:
            i += 1
            if i >= len(argv):
                return None
            value = argv[i]
        store = value
        i += 1
    if i >= len(argv) or argv[i] not in _TABLES:
        return None
    command, rest = argv[i], argv[i + 1:]
    parsed = _parse(rest, *_TABLES[command])
    if parsed is None:
        return None
    words, opts = parsed
    if not words or (command == "recall" and not opts.pop("json", False)):
        return None  # a table is rich's to draw: the full CLI
    from memos_cli.errors import MemosError
    from memos_cli.store.config import resolve_store_path

    try:
        root = resolve_store_path(store)
    except MemosError:
        return None  # the full CLI says what is wrong with it
    from memos_cli.agents.client import NoServer, call  # a lookup of one file when no server runs (the usual case)

    try:
        if command == "recall":
            try:
                opts["k"] = int(opts["k"]) if "k" in opts else None
                opts["min_relevance"] = float(opts["min_relevance"]) if "min_relevance" in opts else None
            except ValueError:
                return None
            body = {"query": " ".join(words), **{k: v for k, v in opts.items() if v is not None}}
            answer = call(root, "POST", "/v1/recall", body)
            sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
            return 0
        if command == "chat":
            return _chat(root, words, opts)
        return _add(root, words, opts, call)
    except NoServer:
        return None
    except MemosError as exc:
        print(f"memos: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _add(root: Any, words: list[str], opts: dict[str, Any], call: Any) -> int | None:
    from memos_cli.plaintext.units import parse_meta_pairs
    from memos_cli.privacy.policy import parse_override

    as_json = opts.pop("json", False)
    if words == ["-"]:
        return None  # stdin: the full CLI reads it (and checks its encoding)
    try:
        importance = float(opts.pop("importance", 0.5))
    except ValueError:
        return None
    body = {"text": " ".join(words), **opts, "importance": importance,
            "meta": parse_meta_pairs(opts.get("meta", [])), "privacy": parse_override(opts.get("privacy"))}
    body = {k: v for k, v in body.items() if v not in (None, [], {})}
    added = call(root, "POST", "/v1/remember", body)
    sys.stdout.write((json.dumps(added, ensure_ascii=False) if as_json else added["id"]) + "\n")
    return 0


def _chat(root: Any, words: list[str], opts: dict[str, Any]) -> int | None:
    """A question for the server's warm chat model; the answer streamed as it comes."""
    from memos_cli.agents.client import NoServer, find

    if words == ["-"]:
        return None
    try:
        for key, kind in (("max_tokens", int), ("temperature", float), ("k", int), ("budget", int),
                          ("min_relevance", float)):
            if key in opts:
                opts[key] = kind(opts[key])
    except ValueError:
        return None
    server = find(root)
    if server is None:
        raise NoServer
    done: dict[str, Any] = {}
    for line in server.stream("/v1/ask", {"question": " ".join(words), "stream": True, **opts}):
        if "piece" in line:
            sys.stdout.write(line["piece"])
            sys.stdout.flush()
        else:
            done = line.get("done") or {}
    sys.stdout.write("\n")
    if done.get("unsaved"):
        print(f"memos: {done['unsaved']}", file=sys.stderr)
    return 0


def main() -> None:
    if os.environ.get("MEMOS_NO_SERVER", "0") in ("", "0"):
        code = quick(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    from memos_cli.cli import main as cli_main

    cli_main()
