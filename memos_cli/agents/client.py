"""The CLI's side of ``memos serve``: find a running server for the store and send it a request.

Standard library only (``http.client`` over the Unix socket, imported only
when there is a server to talk to): a command that finds a server pays
neither lancedb's nor llama.cpp's import, and one that finds none pays a
file lookup. No server, a stale ``serve.json``, or a socket that does not
answer: the caller works locally, as without a server.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memos_cli.errors import LockedError, MemosError, NotFoundError, StoreError, UsageError

INFO = "serve.json"
NO_SERVER_ENV = "MEMOS_NO_SERVER"  # set (to anything but 0): never use a server


def info_path(root: Path) -> Path:
    """Where a running server of the store says where it listens (``serve.Running`` writes it)."""
    return root / ".git" / "memos" / INFO


def _connection(path: str, timeout: float | None) -> Any:
    """An HTTP connection over the Unix socket at ``path`` (connected now: a server gone raises here)."""
    import http.client

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    conn.sock = sock  # http.client sends over it as it is
    return conn


class Server:
    """A running server of one store."""

    def __init__(self, socket_path: str, pid: int) -> None:
        self.socket_path = socket_path
        self.pid = pid

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = 600) -> Any:
        """Send a request; its JSON answer, or the server's error as the matching ``MemosError``."""
        conn = _connection(self.socket_path, timeout)
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return _answer(resp.status, data)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and read the answer as JSON lines, as they come."""
        conn = _connection(self.socket_path, 600)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                _answer(resp.status, resp.read())
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def _answer(status: int, data: bytes) -> Any:
    try:
        parsed = json.loads(data or b"null")
    except ValueError:
        raise StoreError(f"the server answered {status} with something that is not JSON") from None
    if status < 400:
        return parsed
    message = (parsed or {}).get("error", {}).get("message") if isinstance(parsed, dict) else None
    message = message or f"the server answered {status}"
    raise {400: UsageError, 403: NotFoundError, 404: NotFoundError, 413: UsageError, 503: LockedError}.get(
        status, StoreError)(message)


def find(root: Path) -> Server | None:
    """The store's running server, or None (none, or not answering: work locally)."""
    if os.environ.get(NO_SERVER_ENV, "0") not in ("", "0"):
        return None
    try:
        info = json.loads(info_path(root).read_text(encoding="utf-8"))
        path, pid = str(info["socket"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed: its socket is stale
    except PermissionError:
        pass
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return None
    finally:
        probe.close()
    return Server(path, pid)


def call(root: Path, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Send a request to the store's server, or raise ``NoServer`` to work locally."""
    server = find(root)
    if server is None:
        raise NoServer
    try:
        return server.request(method, path, body)
    except (ConnectionRefusedError, FileNotFoundError):  # gone before the request was sent: nothing was done
        raise NoServer from None
    except Exception as exc:
        import http.client

        if not isinstance(exc, OSError | http.client.HTTPException):
            raise
        raise StoreError(f"the server (pid {server.pid}) did not answer: {exc}") from None


class NoServer(MemosError):
    """No server to send the request to: do it here."""
