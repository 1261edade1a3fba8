"""The memory service that agents and servers use: every operation checked against a ``Scope``.

``memos mcp``, ``memos serve`` (HTTP, MCP over HTTP, the OpenAI-compatible
endpoint) and the CLI's requests to a running server all call these
methods; the scope (a token's cubes and right, or ``--cube``/``--read-only``)
is enforced here, once, for every one of them. A unit outside the scope is
"not found", whatever the operation.

The store is used from one worker thread (``Worker``): MemoryStore is not
made for concurrent use within a process. Writes keep their transaction;
adds that arrive together are grouped into one commit (their embedding into
one batch), so many clients adding at once cost one commit per batch, and
each caller still gets its own unit back once that commit has landed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos_cli.agents.access import Scope, audit
from memos_cli.errors import NotFoundError, UsageError
from memos_cli.plaintext.units import MemoryUnit, build_unit, is_unit_id

if TYPE_CHECKING:
    from memos_cli.store.store import MemoryStore

MAX_BATCH = 256  # adds grouped into one commit at most


@dataclass
class _Add:
    unit: MemoryUnit
    privacy: dict[str, str] | None
    future: Future[MemoryUnit] = field(default_factory=Future)


class Worker:
    """One thread that does everything the store does; adds waiting together become one commit."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | _Add | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="memos-store", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future

    def add(self, unit: MemoryUnit, privacy: dict[str, str] | None) -> Future[MemoryUnit]:
        job = _Add(unit, privacy)
        self._jobs.put(job)
        return job.future

    def stop(self) -> None:
        """Finish what was asked, then stop (a server's clean exit: the write in flight lands)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        pending: list[Any] = []
        while True:
            job = pending.pop(0) if pending else self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Add):
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, _Add) and nxt.privacy == job.privacy:
                        batch.append(nxt)
                    else:
                        pending.append(nxt)
                        break
                self._add_batch(batch)
                continue
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def _add_batch(self, batch: list[_Add]) -> None:
        store = self.store
        try:
            guard = store.guard(batch[0].privacy)
        except BaseException as exc:
            for job in batch:
                job.future.set_exception(exc)
            return
        ok = []
        for job in batch:  # each screened on its own: one refused text fails only its own request
            try:
                guard.unit(job.unit)
                ok.append(job)
            except BaseException as exc:
                job.future.set_exception(exc)
        if not ok:
            return
        try:
            store.add_built([j.unit for j in ok], guard.screening)
        except BaseException as exc:
            for job in ok:
                job.future.set_exception(exc)
            return
        for job in ok:
            job.future.set_result(job.unit)


class MemoryService:
    """The operations an agent may call, in ``scope``; ``via`` names the transport in the audit log."""

    def __init__(self, store: MemoryStore, worker: Worker, scope: Scope, via: str = "") -> None:
        self.store = store
        self.worker = worker
        self.scope = scope
        self.via = via

    def with_scope(self, scope: Scope, via: str | None = None) -> MemoryService:
        return MemoryService(self.store, self.worker, scope, self.via if via is None else via)

    def _audit(self, op: str, cube: str | None = None, ids: list[str] | None = None, status: str = "ok") -> None:
        audit(self.store, self.scope, op, cube=cube, ids=ids, status=status, via=self.via)

    def failed(self, op: str, exc: BaseException) -> None:
        """Record a refused or failed request in the audit log (its kind of error, never the text)."""
        from memos_cli.agents.access import AccessDenied

        status = "denied" if isinstance(exc, AccessDenied) else "not found" if isinstance(exc, NotFoundError) else (
            "bad input" if isinstance(exc, UsageError) else "failed")
        self._audit(op, None, None, status)

    def _run(self, fn: Callable[[], Any]) -> Any:
        return self.worker.call(fn).result()

    def _unit(self, uid: str, *, write: bool = False) -> MemoryUnit:
        """A unit by id (or unique prefix), within the scope; "not found" when outside it."""
        if not isinstance(uid, str) or not uid.strip():
            raise UsageError("give a memory's id")
        if self.scope.cubes is not None and not is_unit_id(uid.strip().lower()):
            # A prefix is looked up in every cube: an ambiguous one would tell of units in others.
            raise UsageError(f"give the memory's full id (14 characters), not {uid.strip()[:20]!r}")
        unit = self._run(lambda: self.store.get(uid))
        if not self.scope.readable(unit.cube):
            raise NotFoundError(f"no memory with id {uid.strip().lower()!r}")
        self.scope.check(unit.cube, write=write, what=unit.id)
        return unit

    def _cubes(self, cube: str | None) -> list[str] | None:
        """The cubes a read may look in: the one asked for (checked), else the scope's (None: all)."""
        if cube is not None:
            self.scope.check(cube)
            return [cube]
        return list(self.scope.cubes) if self.scope.cubes is not None else None

    # ---- reads ----------------------------------------------------------------------------

    def recall(self, query: str, k: int = 10, *, cube: str | None = None, kind: str | None = None,
               tags: list[str] | None = None, since: str | None = None, until: str | None = None,
               pinned: bool | None = None, context: bool = True,
               min_relevance: float | None = None) -> list[dict[str, Any]]:
        from memos_cli.plaintext.retrieval import Filters
        from memos_cli.plaintext.units import parse_time

        floor = self.store.config.recall_min_relevance if min_relevance is None else min_relevance
        cubes = self._cubes(cube)
        base = {"kind": kind, "tags": tags or [], "since": parse_time(since, "since"), "until": parse_time(until, "until"),
                "pinned": pinned}
        per_cube = [None] if cubes is None else cubes

        def run() -> list[dict[str, Any]]:
            hits = []
            for c in per_cube:
                hits += self.store.recall(query, k, Filters(cube=c, **base), context=context, min_relevance=floor)
            if len(per_cube) > 1:  # scores are scaled per search; relevance compares across them
                hits.sort(key=lambda h: -(h.relevance or 0.0))
            return [h.to_json() for h in hits[:k]]

        results = self._run(run)
        self._audit("recall", cube, [r["id"] for r in results])
        return results

    def list(self, *, cube: str | None = None, kind: str | None = None, tags: list[str] | None = None,
             pinned: bool | None = None, limit: int = 50) -> list[dict[str, Any]]:
        from memos_cli.plaintext.retrieval import Filters

        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= 10000:
            raise UsageError(f"bad limit {limit!r}: use a whole number from 0 to 10000")
        cubes = self._cubes(cube)

        def run() -> list[dict[str, Any]]:
            units: list[MemoryUnit] = []
            for c in [None] if cubes is None else cubes:
                units += self.store.list(Filters(cube=c, kind=kind, tags=tags or [], pinned=pinned), limit=limit)
            units.sort(key=lambda u: u.id, reverse=True)
            return [u.to_json() for u in units[:limit or None]]

        out = self._run(run)
        self._audit("list", cube, [u["id"] for u in out])
        return out

    def show(self, uid: str) -> dict[str, Any]:
        unit = self._unit(uid)
        self._audit("show", unit.cube, [unit.id])
        return unit.to_json()

    def history(self, uid: str) -> list[dict[str, Any]]:
        from memos_cli.store.history import unit_versions

        unit = self._unit(uid)
        versions = self._run(lambda: unit_versions(self.store, unit.id))
        self._audit("history", unit.cube, [unit.id])
        return [v.to_json() for v in versions]

    def pinned_block(self, cube: str | None = None) -> list[dict[str, Any]]:
        """The pinned memory (what every chat of the cube starts from)."""
        return self.list(cube=cube, pinned=True, limit=0)

    # ---- writes -----------------------------------------------------------------------------

    def remember(self, text: str, *, kind: str = "note", tags: list[str] | None = None, time: str | None = None,
                 ttl: str | None = None, cube: str | None = None, meta: dict[str, Any] | None = None,
                 user: str | None = None, importance: float = 0.5, pinned: bool = False,
                 privacy: dict[str, str] | None = None) -> dict[str, Any]:
        target = self.scope.cube_for(cube)  # refuses a read-only scope, or a cube outside it
        unit = build_unit(text, kind=kind, tags=tags, time=time, ttl=ttl, cube=target, meta=meta, user=user,
                          importance=importance, pinned=pinned)
        added = self.worker.add(unit, privacy).result()  # embedded with the other adds of its batch
        self._audit("remember", target, [added.id])
        return added.to_json()

    def forget(self, ids: list[str]) -> list[str]:
        units = [self._unit(uid, write=True) for uid in ids]
        done = self._run(lambda: self.store.forget([u.id for u in units]))
        self._audit("forget", ",".join(sorted({u.cube for u in units})), [u.id for u in done])
        return [u.id for u in done]

    def pin(self, ids: list[str], pinned: bool = True) -> list[str]:
        units = [self._unit(uid, write=True) for uid in ids]
        done = self._run(lambda: self.store.pin([u.id for u in units], pinned))
        self._audit("pin" if pinned else "unpin", ",".join(sorted({u.cube for u in units})), [u.id for u in done])
        return [u.id for u in done]


class Chats:
    """The chat model, loaded once, and a warm session per cube (its head's KV state in context).

    A chat runs on its own thread and its own view of the store (read-only: recall), so that a
    long answer does not hold up the store's worker; its turn is saved through the worker. The
    sessions are made anew after a purge (their heads may hold the purged text); like an
    interactive `memos chat`, a session keeps the head it started with until then."""

    def __init__(self, store: MemoryStore) -> None:
        self.root = store.root
        self._lock = threading.Lock()
        self._generator: Any = None
        self._sessions: dict[str, Any] = {}
        self._purged = ""  # the store's purge mark when the sessions were made

    def session(self, cube: str) -> Any:
        from memos_cli.chat.session import ChatOptions, ChatSession, chat_settings
        from memos_cli.models.generator import load_generator
        from memos_cli.store.purge import purge_mark
        from memos_cli.store.store import MemoryStore

        mark = purge_mark(MemoryStore(self.root))
        if mark != self._purged:  # a purge since: a session's head may hold the purged text in its KV state
            self._sessions.clear()
            self._purged = mark
        if cube not in self._sessions:
            store = MemoryStore(self.root)
            if self._generator is None:
                spec, size = chat_settings(store, None, None)
                self._generator = load_generator(spec, n_ctx=size)
            self._sessions[cube] = ChatSession(store, self._generator, ChatOptions(cube=cube, save=False,
                                                                                   keep_head=True))
        return self._sessions[cube]

    def warm(self, cube: str) -> None:
        """Load the model and the cube's session now (a server's start); a failure waits for the first ask."""
        try:
            with self._lock:
                self.session(cube)
        except Exception:  # noqa: BLE001 - reported by the first ask that needs it
            pass

    def stream(self, cube: str, question: str, history: list[tuple[str, str]], **settings: Any) -> Any:
        """Yield the answer's pieces, then the turn (the last item); one chat at a time. ``settings``:
        this turn's max_tokens, temperature, k, budget, min_relevance (None: the session's defaults)."""
        from memos_cli.chat.session import ChatOptions

        with self._lock:
            session = self.session(cube)
            defaults = ChatOptions(cube=cube)
            for key in ("max_tokens", "temperature", "k", "budget", "min_relevance"):
                value = settings.get(key)
                setattr(session.options, key, getattr(defaults, key) if value is None else value)
            ChatOptions.__post_init__(session.options)  # the values given, checked
            session.history[:] = history
            yield from session.ask(question)
            yield session.last


def ask_turn(service: MemoryService, chats: Chats, question: str, *, cube: str | None = None,
             history: list[tuple[str, str]] | None = None, save: bool = True, **settings: Any) -> Any:
    """A chat turn on the local model with the cube's memory: an iterator of the answer's pieces,
    then a dict of the turn (the answer, the memories used, the id it was saved as).

    The scope, the question and the settings are checked here, before the iterator is returned:
    a streamed answer never starts with a request that is refused."""
    from memos_cli.chat.session import ChatOptions

    if save:
        target = service.scope.cube_for(cube)  # saving the turn is a write
    else:
        target = cube or (service.scope.cubes[0] if service.scope.cubes else "default")
        service.scope.check(target)
    if not isinstance(question, str) or not question.strip():
        raise UsageError("the question is empty")
    ChatOptions(cube=target, **{k: v for k, v in settings.items() if v is not None})  # bad values fail here
    return _turn(service, chats, target, question, history or [], save, settings)


def _turn(service: MemoryService, chats: Chats, target: str, question: str, history: list[tuple[str, str]],
          save: bool, settings: dict[str, Any]) -> Any:
    turn = None
    for item in chats.stream(target, question, history, **settings):
        if isinstance(item, str):
            yield item
        else:
            turn = item
    assert turn is not None
    saved = None
    if save and turn.answer:
        unit = build_unit(f"User: {turn.question}\nAssistant: {turn.answer}", kind="episode", cube=target,
                          meta={"recalled": [u.id for u in turn.memories], "via": service.via or "server"})
        try:
            saved = service.worker.add(unit, None).result().id
        except UsageError as exc:  # the privacy policy refused it: answered, not saved
            turn.unsaved = str(exc)
    service._audit("ask", target, [u.id for u in turn.memories] + ([saved] if saved else []))
    yield {"answer": turn.answer, "memories": [u.id for u in turn.memories], "saved": saved,
           "unsaved": turn.unsaved or None, "tokens": turn.tokens, "prompt_tokens": turn.prompt_tokens,
           "cached_tokens": turn.cached_tokens, "timings": {k: round(v, 4) for k, v in turn.timings.items()}}
