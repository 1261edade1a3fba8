"""Who may do what: scoped tokens, the scope a request runs in, and the audit log.

Tokens (``memos token create NAME --cube C --read|--write``) are kept in
``.git/memos/tokens.json``, beside the store and never in its history, as
sha256 hashes: the secret is shown once, when it is made. A token names its
cubes (``*``: all) and its right (``read`` or ``write``); a ``Scope`` made
from it is what the service checks on every operation, so the HTTP
endpoints, MCP over HTTP and MCP over stdio (``--cube``, ``--read-only``)
share one set of rules.

Every request a server answers is appended to ``.git/memos/audit.jsonl``:
the time, the token's name, the operation, the cube and the ids read or
written, never the text (``memos audit`` reads it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import check_name, iso, utcnow
from memos_cli.store import layout

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

TOKENS = "tokens.json"
AUDIT = "audit.jsonl"
PREFIX = "memos_"
RIGHTS = ("read", "write")


class AccessDenied(NotFoundError):
    """A request outside its token's scope: told as not found (exit 3, HTTP 403), so that a token
    learns nothing of other cubes."""


@dataclass(frozen=True)
class Scope:
    """The cubes a request may reach (``None``: all) and whether it may write."""

    name: str = "local"
    cubes: tuple[str, ...] | None = None
    write: bool = True

    def readable(self, cube: str) -> bool:
        return self.cubes is None or cube in self.cubes

    def check(self, cube: str, *, write: bool = False, what: str = "") -> None:
        if not self.readable(cube):
            raise AccessDenied(f"{what or 'cube ' + repr(cube)}: not within this token's cubes")
        if write and not self.write:
            raise AccessDenied(f"{what or 'cube ' + repr(cube)}: this token may only read")

    def cube_for(self, cube: str | None) -> str:
        """The cube a write goes to: the one given, else this scope's only cube, else ``default``."""
        if cube is None:
            cube = self.cubes[0] if self.cubes and len(self.cubes) == 1 else "default"
        self.check(cube, write=True)
        return cube

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cubes": list(self.cubes) if self.cubes is not None else ["*"],
                "rights": "write" if self.write else "read"}


@dataclass
class Token:
    name: str
    cubes: list[str]
    rights: str
    created_at: str
    sha256: str = field(repr=False, default="")
    revoked_at: str | None = None

    @property
    def scope(self) -> Scope:
        return Scope(self.name, None if "*" in self.cubes else tuple(self.cubes), self.rights == "write")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cubes": self.cubes, "rights": self.rights, "created_at": self.created_at,
                "revoked_at": self.revoked_at}


def _path(store: MemoryStore) -> Path:
    return store.state_dir / TOKENS


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def tokens(store: MemoryStore) -> list[Token]:
    try:
        data = json.loads(_path(store).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError:
        raise UsageError(f"{_path(store)} is damaged; remove it and create the tokens again") from None
    return [Token(**t) for t in data.get("tokens", [])]


def _save(store: MemoryStore, found: list[Token]) -> None:
    path = _path(store)
    tmp = path.with_name(path.name + ".tmp")
    files.write_private(tmp, (json.dumps({"tokens": [{**t.to_json(), "sha256": t.sha256} for t in found]},
                                         indent=2) + "\n").encode())
    os.replace(tmp, path)


def create(store: MemoryStore, name: str, cubes: list[str], write: bool) -> tuple[Token, str]:
    """A new token; returns it and its secret (shown once: only its hash is kept)."""
    check_name(name, "token name")
    if not cubes:
        raise UsageError("give the cubes the token may reach: --cube C (repeat for more, or --cube '*' for all)")
    for cube in cubes:
        if cube != "*":
            check_name(cube, "cube")
    store.config  # noqa: B018 - a missing store fails here
    with store.locked():
        found = tokens(store)
        if any(t.name == name and t.revoked_at is None for t in found):
            raise UsageError(f"a token named {name} exists; revoke it first (memos token revoke {name})")
        secret = PREFIX + secrets.token_urlsafe(32)
        token = Token(name, sorted(set(cubes)), "write" if write else "read", iso(utcnow()) or "", _hash(secret))
        _save(store, [t for t in found if t.name != name] + [token])
    return token, secret


def revoke(store: MemoryStore, name: str) -> Token:
    with store.locked():
        found = tokens(store)
        live = [t for t in found if t.name == name and t.revoked_at is None]
        if not live:
            raise NotFoundError(f"no token named {name!r}" + (" that is not revoked" if any(t.name == name for t in found)
                                                                 else ""))
        live[0].revoked_at = iso(utcnow())
        _save(store, found)
    return live[0]


def verify(store: MemoryStore, secret: str) -> Token | None:
    """The live token this secret is, or None."""
    if not secret.startswith(PREFIX):
        return None
    digest = _hash(secret)
    for token in tokens(store):
        if token.revoked_at is None and hmac.compare_digest(token.sha256, digest):
            return token
    return None


# ---- the audit log -----------------------------------------------------------------------


def audit(store: MemoryStore, scope: Scope, op: str, *, cube: str | None = None, ids: list[str] | None = None,
          status: str = "ok", via: str = "") -> None:
    """Append one request to the audit log (never the text)."""
    line = {"at": iso(utcnow()), "token": scope.name, "op": op, "cube": cube, "ids": ids or [], "status": status,
            **({"via": via} if via else {})}
    try:
        layout.append(store.state_dir / AUDIT, (json.dumps(line) + "\n").encode())
    except OSError:
        pass  # a store we may read but not write: nothing to record in


def read_audit(store: MemoryStore, n: int | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """The audit log's records, newest last (``n``: the last n)."""
    try:
        lines = (store.state_dir / AUDIT).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if token is None or rec.get("token") == token:
            out.append(rec)
    return out[-n:] if n else out
