"""``memos serve``: one resident process per store, keeping the table, the embedder and the chat model warm.

It listens on a Unix socket (mode 0600: only the store's owner reaches it,
and is trusted as such) and, when asked, on ``--host``/``--port`` (127.0.0.1
by default), where every request needs a bearer token (``memos token``).
Both serve the same ASGI app (Starlette, the MCP SDK's own, run by uvicorn):

- JSON endpoints under ``/v1/`` (recall, remember, forget, pin, units, history, ask, status);
- MCP over streamable HTTP at ``/mcp``;
- an OpenAI-compatible ``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models``:
  the local chat model, with memory recalled for the last user message.

The CLI finds a running server through ``.git/memos/serve.json`` (its pid and
socket) and sends it the request instead of loading everything
(``agents.client``). A second server on the same store is refused with the
first one's pid (``serve.lock``, an ``fcntl`` lock held for the server's
life); a socket left by a killed server is removed by the next. SIGTERM or
Ctrl-C stops taking requests, finishes those in flight and the writes
queued, then exits.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.agents import client
from memos_cli.agents.access import AccessDenied, Scope, audit, verify
from memos_cli.errors import LockedError, MemosError, NotFoundError, UsageError
from memos_cli.plaintext import files

if TYPE_CHECKING:
    from memos_cli.agents.service import Chats, MemoryService
    from memos_cli.store.store import MemoryStore

LOCK = "serve.lock"
MAX_BODY = 1024 * 1024  # bytes of a request body
MODEL_ID = "memos"  # the model /v1/models lists
_SOCKET_MAX = 100  # AF_UNIX paths are limited to about 107 bytes

_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar("memos_scope")
_via: contextvars.ContextVar[str] = contextvars.ContextVar("memos_via", default="http")


def info_path(store: MemoryStore) -> Path:
    return client.info_path(store.root)


def socket_path(store: MemoryStore) -> Path:
    """The server's socket: in the store when the path is short enough, else in a private folder of /tmp."""
    inside = store.state_dir / "serve.sock"
    if len(str(inside)) <= _SOCKET_MAX:
        return inside
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"memos-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder / f"{hashlib.sha256(str(store.root).encode()).hexdigest()[:16]}.sock"


def read_info(store: MemoryStore) -> dict[str, Any] | None:
    try:
        return json.loads(info_path(store).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- the app ---------------------------------------------------------------------------------


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, AccessDenied):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, LockedError):
        return 503
    return 500


class _Guard:
    """ASGI middleware: the body limit, and who is asking (a bearer token on TCP; the owner on the socket)."""

    def __init__(self, app: Any, store: MemoryStore, *, local: bool) -> None:
        self.app, self.store, self.local = app, store, local

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length = MAX_BODY + 1
        if length > MAX_BODY:
            await _error(413, f"the request body is over {MAX_BODY // 1024} KiB")(scope, receive, send)
            return
        if self.local:
            who = Scope("local")
        else:
            auth = headers.get("authorization", "")
            secret = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            token = await asyncio.to_thread(verify, self.store, secret) if secret else None
            if token is None:
                message = "a bearer token is required (memos token create)" if not secret else "unknown or revoked token"
                await asyncio.to_thread(audit, self.store, Scope("(no token)" if not secret else "(unknown token)"),
                                        scope.get("path", ""), status="unauthorized", via="http")
                response = _error(401, message)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            who = token.scope
        received = 0

        async def limited() -> dict[str, Any]:  # a body sent without its length is cut off at the limit too
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:
                    raise _TooLarge
            return message

        scope_token, via_token = _scope.set(who), _via.set("socket" if self.local else "http")
        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _error(413, f"the request body is over {MAX_BODY // 1024} KiB")(scope, receive, send)
        finally:
            _scope.reset(scope_token)
            _via.reset(via_token)


class _TooLarge(Exception):
    pass


def build_app(store: MemoryStore, base: MemoryService, chats: Chats, started: float) -> Any:
    """The ASGI app: the MCP SDK's streamable HTTP app at /mcp, with the JSON and OpenAI routes added to it."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

    from memos_cli.agents import mcp as mcp_server
    from memos_cli.agents.service import ask_turn

    def service() -> MemoryService:
        return base.with_scope(_scope.get(Scope("local")), via=_via.get())

    server = mcp_server.build(service, chats, read_only=False)

    def route(path: str, methods: list[str]) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def wrap(fn: Callable[..., Awaitable[Any]]) -> Any:
            async def handler(request: Request) -> Any:
                s = service()
                try:
                    return await fn(request, s)
                except MemosError as exc:
                    s.failed(path, exc)
                    return _error(_status_of(exc), str(exc))
                except _BadJSON as exc:
                    s.failed(path, UsageError(str(exc)))
                    return _error(400, str(exc))
            server.custom_route(path, methods=methods)(handler)
            return handler
        return wrap

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise _BadJSON(f"the request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise _BadJSON("the request body must be a JSON object")
        return data

    def run(fn: Callable[[], Any]) -> Awaitable[Any]:
        return asyncio.to_thread(fn)

    def args(data: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r}")
        return data

    @route("/v1/status", ["GET"])
    async def status(request: Request, s: MemoryService) -> Any:
        return JSONResponse({"pid": os.getpid(), "store": str(store.root), "uptime_s": round(time.time() - started, 1),
                             "scope": s.scope.to_json(), **{k: v for k, v in (read_info(store) or {}).items()
                                                             if k in ("socket", "host", "port")}})

    @route("/v1/recall", ["POST"])
    async def recall(request: Request, s: MemoryService) -> Any:
        data = args(await body(request), {"query", "k", "cube", "kind", "tags", "since", "until", "pinned", "context",
                                          "min_relevance"})
        query = data.pop("query", None)
        if not isinstance(query, str) or not query.strip():
            raise UsageError('give a "query"')
        k = data.pop("k", None) or store.config.recall_k
        return JSONResponse({"query": query, "results": await run(lambda: s.recall(query, k, **data))})

    @route("/v1/remember", ["POST"])
    async def remember(request: Request, s: MemoryService) -> Any:
        data = args(await body(request), {"text", "kind", "tags", "time", "ttl", "cube", "meta", "user", "importance",
                                          "pinned", "privacy"})
        if "text" not in data:
            raise UsageError('give a "text"')
        return JSONResponse(await run(lambda: s.remember(**data)))

    @route("/v1/forget", ["POST"])
    async def forget(request: Request, s: MemoryService) -> Any:
        ids = _ids(args(await body(request), {"ids"}))
        return JSONResponse({"forgotten": await run(lambda: s.forget(ids))})

    @route("/v1/pin", ["POST"])
    async def pin(request: Request, s: MemoryService) -> Any:
        data = args(await body(request), {"ids", "pinned"})
        pinned = data.get("pinned", True)
        if not isinstance(pinned, bool):
            raise UsageError('"pinned" must be true or false')
        ids = _ids(data)
        return JSONResponse({"pinned" if pinned else "unpinned": await run(lambda: s.pin(ids, pinned))})

    @route("/v1/units", ["GET"])
    async def units(request: Request, s: MemoryService) -> Any:
        q = request.query_params
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise UsageError("limit must be a whole number") from None
        pinned = {"true": True, "false": False}.get(q.get("pinned", ""), None)
        return JSONResponse(await run(lambda: s.list(cube=q.get("cube"), kind=q.get("kind"),
                                                     tags=q.getlist("tag"), pinned=pinned, limit=limit)))

    @route("/v1/units/{uid}", ["GET"])
    async def unit(request: Request, s: MemoryService) -> Any:
        return JSONResponse(await run(lambda: s.show(request.path_params["uid"])))

    @route("/v1/units/{uid}/history", ["GET"])
    async def history(request: Request, s: MemoryService) -> Any:
        return JSONResponse(await run(lambda: s.history(request.path_params["uid"])))

    @route("/v1/ask", ["POST"])
    async def ask(request: Request, s: MemoryService) -> Any:
        data = args(await body(request), {"question", "cube", "stream", "save", "max_tokens", "temperature", "k",
                                          "budget", "min_relevance"})
        question = data.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UsageError('give a "question"')
        turn = ask_turn(s, chats, question, cube=data.get("cube"), save=bool(data.get("save", s.scope.write)),
                        **{key: _number(data, key) for key in ("max_tokens", "temperature", "k", "budget",
                                                               "min_relevance")})
        if data.get("stream"):
            async def lines() -> Any:  # JSON lines: {"piece"} ..., then {"done": turn}
                async for item in _aiter(turn):
                    yield json.dumps({"piece": item} if isinstance(item, str) else {"done": item}) + "\n"
            return StreamingResponse(lines(), media_type="application/x-ndjson")
        result: dict[str, Any] = {}
        async for item in _aiter(turn):
            if isinstance(item, dict):
                result = item
        return JSONResponse(result)

    @route("/v1/models", ["GET"])
    async def models(request: Request, s: MemoryService) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": int(started),
                                                          "owned_by": "memos"}]})

    @route("/v1/chat/completions", ["POST"])
    async def completions(request: Request, s: MemoryService) -> Any:
        data = await body(request)
        question, history = _openai_messages(data.get("messages"))
        cube = data.get("user") if isinstance(data.get("user"), str) and s.scope.readable(data["user"]) else None
        turn = ask_turn(s, chats, question, cube=cube, history=history, save=s.scope.write,
                        max_tokens=_number(data, "max_tokens") or _number(data, "max_completion_tokens"),
                        temperature=_number(data, "temperature"))
        created, cid = int(time.time()), f"chatcmpl-{os.urandom(8).hex()}"
        if data.get("stream"):
            async def events() -> Any:
                head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID}
                yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
                async for item in _aiter(turn):
                    if isinstance(item, str):
                        yield _sse({**head, "choices": [{"index": 0, "delta": {"content": item}, "finish_reason": None}]})
                yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        result: dict[str, Any] = {}
        async for item in _aiter(turn):
            if isinstance(item, dict):
                result = item
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": MODEL_ID,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": result.get("answer", "")},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": result.get("prompt_tokens", 0),
                                       "completion_tokens": result.get("tokens", 0),
                                       "total_tokens": result.get("prompt_tokens", 0) + result.get("tokens", 0),
                                       "prompt_tokens_details": {"cached_tokens": result.get("cached_tokens", 0)}},
                             "memos": {"memories": result.get("memories", []), "saved": result.get("saved")}})

    return server.streamable_http_app(stateless_http=True, json_response=True)


class _BadJSON(Exception):
    pass


def _ids(data: dict[str, Any]) -> list[str]:
    ids = data.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise UsageError('give "ids": a list of memory ids')
    return ids


def _number(data: dict[str, Any], key: str) -> Any:
    """A number of the request (None when absent); a bad one is refused, before any work."""
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"bad {key} {value!r}: use a number")
    fraction = key in ("temperature", "min_relevance")
    if value is not None and not fraction and value != int(value):
        raise UsageError(f"bad {key} {value!r}: use a whole number")
    return value if value is None or fraction else int(value)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _openai_messages(messages: Any) -> tuple[str, list[tuple[str, str]]]:
    """The last user message, and the (user, assistant) pairs before it."""
    if not isinstance(messages, list) or not messages:
        raise UsageError('give "messages": a list of {"role", "content"}')
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise UsageError(f"messages[{i}]: expected an object with a role (user, assistant, system)")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            content = ""
        if m["role"] == "user":
            if pending is not None:
                turns.append((pending, ""))
            pending = content
        elif m["role"] == "assistant" and pending is not None:
            turns.append((pending, content))
            pending = None
    if pending is None or not pending.strip():
        raise UsageError("the last message must be the user's, with text")
    return pending, turns


async def _aiter(gen: Any) -> Any:
    """Iterate a blocking generator (a chat turn) off the event loop."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, gen, done)
        if item is done:
            return
        yield item


# ---- running ---------------------------------------------------------------------------------


class Running:
    """The server's claim on its store: the lock, the info file, the socket."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._fd: int | None = None
        self.socket = socket_path(store)

    def claim(self) -> list[str]:
        """Take the store's server lock; refuse when another server holds it. Returns what was cleaned up."""
        notes = []
        self.store.state_dir.mkdir(mode=files.DIR_MODE, exist_ok=True)
        fd = os.open(self.store.state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = (read_info(self.store) or {}).get("pid", "?")
            raise LockedError(f"a server is already running on this store (pid {pid}); stop it first "
                              f"(kill {pid}), or use it: memos commands send it their requests") from None
        self._fd = fd
        if self.socket.exists() or self.socket.is_symlink():  # left by a server that was killed
            self.socket.unlink()
            notes.append(f"removed the socket a stopped server left ({self.socket})")
        return notes

    def publish(self, host: str | None, port: int | None) -> None:
        os.chmod(self.socket, 0o600)
        data = {"pid": os.getpid(), "socket": str(self.socket), "host": host, "port": port, "started": time.time()}
        tmp = info_path(self.store).with_name(info_path(self.store).name + ".tmp")
        files.write_private(tmp, json.dumps(data).encode())
        os.replace(tmp, info_path(self.store))

    def release(self) -> None:
        info_path(self.store).unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def serve(store: MemoryStore, *, host: str | None = None, port: int | None = None, chat: bool = True,
          ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    import uvicorn

    from memos_cli.agents.service import Chats, MemoryService, Worker

    if port is not None:
        _check_port(host or "127.0.0.1", port)
    running = Running(store)
    notes = running.claim()
    started = time.time()
    worker = Worker(store)
    try:
        # Warm: the table opened, the embedder loaded, the chat model (and a default cube's head) on first use.
        worker.call(lambda: (store._ensure_current(), store.embedder, store.table.exists())).result()
        base = MemoryService(store, worker, Scope("local"), via="socket")
        chats = Chats(store)
        app = build_app(store, base, chats, started)
        servers = [_server(uvicorn.Config(_Guard(app, store, local=True), uds=str(running.socket), log_level="warning",
                                          lifespan="on", timeout_graceful_shutdown=30))]
        if port is not None:
            servers.append(_server(uvicorn.Config(_Guard(app, store, local=False), host=host or "127.0.0.1", port=port,
                                                  log_level="warning", lifespan="off", timeout_graceful_shutdown=30)))

        async def main() -> None:
            loop = asyncio.get_running_loop()

            def stop() -> None:
                for s in servers:
                    s.should_exit = True

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop)
            tasks = [asyncio.create_task(servers[0].serve())]
            while not servers[0].started and not tasks[0].done():  # the socket first: it runs the app's lifespan
                await asyncio.sleep(0.01)
            tasks += [asyncio.create_task(s.serve()) for s in servers[1:]]
            while not all(s.started for s in servers) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
            if all(s.started for s in servers):
                running.publish(host or "127.0.0.1" if port is not None else None, port)
                if ready:
                    ready({"pid": os.getpid(), "socket": str(running.socket), "host": host if port is not None else None,
                           "port": port, "notes": notes})
                if chat:  # the chat model and the default cube's head, loaded while the first requests come in;
                    # after the ready line: llama.cpp points stdout at /dev/null while it loads a model
                    threading.Thread(target=chats.warm, args=("default",), daemon=True).start()
            await asyncio.gather(*tasks)

        asyncio.run(main())
    finally:
        worker.stop()  # the writes queued land before the process goes
        running.release()


def _check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address this server could not listen on (before anything is loaded)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _server(config: Any) -> Any:
    """uvicorn's server, leaving signals to ``serve`` (two servers share one process)."""
    import uvicorn

    class Quiet(uvicorn.Server):
        def capture_signals(self) -> Any:  # type: ignore[override]
            return nullcontext()

    return Quiet(config)
