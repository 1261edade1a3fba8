"""Commands for agents: mcp, serve, token, audit."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .app import app
from .common import open_existing_store, open_store, print_json

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command()
def mcp(
    ctx: typer.Context,
    cube: Annotated[str | None, typer.Option("--cube", metavar="CUBE", help="Expose only this cube.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Offer only the tools that read.")] = False,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Offer `ask` (loads the chat model on first "
                                                                "use).")] = True,
) -> None:
    """Serve memory to an agent over the Model Context Protocol, on stdin/stdout.

    Tools: remember, recall, forget, show, list, pin, unpin, history, ask;
    resources: memos://pinned/{cube}, memos://unit/{id}. Configure it in
    your agent as the command `memos mcp` (see the README for Claude
    Desktop, Claude Code and Cursor).

    Examples:

      memos mcp

      memos --store ~/work-memory mcp --cube work --read-only
    """
    from memos_cli.agents.mcp import run_stdio
    from memos_cli.plaintext.units import check_name

    if cube is not None:
        check_name(cube, "cube")
    store = open_store(ctx)
    if not store.exists():
        store.init()
    store.recover()
    run_stdio(store, cube=cube, read_only=read_only, chat=chat)


token_app = typer.Typer(
    help="Scoped tokens for `memos serve` (HTTP and MCP over HTTP): each reaches only its cubes, with its right.\n\n"
         "Examples:\n\n  memos token create editor --cube work --write\n\n  memos token list\n\n  memos token revoke editor",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    cube: Annotated[list[str], typer.Option("--cube", metavar="CUBE", help="A cube it may reach; repeat for more; "
                                                                           "'*' for all.")],
    write: Annotated[bool, typer.Option("--write/--read", help="May it change memory (--write) or only read "
                                                               "(--read, the default)?")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Make a token; its secret is printed once (only its hash is kept, outside the store's history).

    Examples:

      memos token create editor --cube work --write

      memos token create dashboard --cube '*'
    """
    from memos_cli.agents.access import create

    store = open_existing_store(ctx)
    token, secret = create(store, name, cube, write)
    if json_out:
        print_json({**token.to_json(), "token": secret})
    else:
        print(secret)
        print(f"token {token.name}: {token.rights} on {', '.join(token.cubes)}; keep the secret above, it is not "
              "shown again", file=sys.stderr)


@token_app.command("list")
def token_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the tokens (never their secrets)."""
    from memos_cli.agents.access import tokens

    found = tokens(open_existing_store(ctx))
    if json_out:
        print_json([t.to_json() for t in found])
        return
    if not found:
        print("no tokens; make one with `memos token create NAME --cube C`", file=sys.stderr)
    for t in found:
        state = f"revoked {t.revoked_at}" if t.revoked_at else "live"
        print(f"{t.name}\t{t.rights}\t{','.join(t.cubes)}\tcreated {t.created_at}\t{state}")


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")],
                 json_out: JsonOpt = False) -> None:
    """Revoke a token: from the next request on, it is refused."""
    from memos_cli.agents.access import revoke

    token = revoke(open_existing_store(ctx), name)
    if json_out:
        print_json(token.to_json())
    else:
        print(f"revoked token {token.name}")


@app.command()
def audit(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", metavar="N", min=1, help="The last N requests.")] = 50,
    token: Annotated[str | None, typer.Option("--token", metavar="NAME", help="Only this token's requests.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """What servers did for whom: each request's time, token, operation, cube and ids (never the text).

    Example: memos audit -n 20 --token editor
    """
    from memos_cli.agents.access import read_audit

    found = read_audit(open_existing_store(ctx), n, token)
    if json_out:
        print_json(found)
        return
    from .render import printable

    for rec in found:
        ids = " ".join(rec.get("ids") or [])
        print(printable(f"{rec.get('at')}  {rec.get('token')}  {rec.get('op')}  {rec.get('status')}  "
                        f"cube={rec.get('cube') or '-'}  {ids}"))


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option("--port", metavar="PORT", min=1, max=65535,
                                             help="Also listen on TCP (HTTP + JSON, MCP at /mcp, /v1/chat/completions); "
                                                  "every request then needs a bearer token.")] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="The address for --port.")] = "127.0.0.1",
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Load the chat model (ask, chat completions).")] = True,
    status: Annotated[bool, typer.Option("--status", help="Say whether a server runs for this store, and stop.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server of this store (SIGTERM: it finishes its "
                                                      "writes first).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Keep the store's table, embedder and chat model loaded, and answer requests: one process per store.

    It listens on a Unix socket in the store (mode 0600), which `memos
    recall`, `add` and `chat` use when it is there (`memos --no-server ...`
    works locally), and with --port on HTTP for agents and editors: MCP over
    streamable HTTP at /mcp, an OpenAI-compatible /v1/chat/completions, and
    JSON endpoints under /v1/, each request with a bearer token (`memos
    token create`). Every request is written to the audit log (`memos audit`).

    Examples:

      memos serve &

      memos serve --port 8765

      memos serve --status --json

      memos serve --stop
    """
    import os
    import signal
    import time

    from memos_cli.agents import serve as serving
    from memos_cli.agents.client import find

    store = open_store(ctx)
    if status or stop:
        store.config  # noqa: B018 - a missing store fails here
        server = find(store.root)
        info = serving.read_info(store) if server else None
        if stop and server is not None:
            os.kill(server.pid, signal.SIGTERM)
            for _ in range(600):
                if find(store.root) is None:
                    break
                time.sleep(0.05)
        state = {"running": server is not None and not stop, **({k: info[k] for k in ("pid", "socket", "host", "port")}
                                                                 if info else {})}
        if stop:
            state["stopped"] = server is not None
        if json_out:
            print_json(state)
        elif stop:
            print(f"stopped the server (pid {server.pid})" if server else "no server runs for this store")
        elif server is None:
            print("no server runs for this store")
        else:
            where = f", http://{info['host']}:{info['port']}" if info and info.get("port") else ""
            print(f"a server runs for this store: pid {server.pid}, socket {server.socket_path}{where}")
        return
    if not store.exists():
        store.init()
    store.recover()

    def ready(info: dict[str, object]) -> None:
        for note in info.pop("notes", []):  # type: ignore[attr-defined]
            print(f"memos: {note}", file=sys.stderr)
        if json_out:
            print_json({"running": True, **info})
        else:
            where = f" and http://{info['host']}:{info['port']}" if info.get("port") else ""
            print(f"serving {store.root} on {info['socket']}{where} (pid {info['pid']}); Ctrl-C or "
                  "`memos serve --stop` stops it", file=sys.stderr)
        sys.stdout.flush()

    serving.serve(store, host=host if port is not None else None, port=port, chat=chat, ready=ready)
