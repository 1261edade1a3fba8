"""Activation memory: a block of memory prefilled on a chat model, its KV state
saved so that a chat starts without reading that block again.

An *activation* is built from a selection of a cube's units (the pinned ones,
the hottest N, or the results of a query), rendered into the chat's head
(``prompt.head_text``), prefilled, and saved with its record
(``store.caches``). Building one changes no memory and makes no commit; it
takes the store's lock only to write the file and record.

A cache is loaded only when it is *current*: built for the same model file
and context size, from units that have not changed since (same versions,
still active; for ``--pinned``, still exactly the pinned set), with the same
head tokens. Anything else is stale, and chat prefills instead.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from memos_cli.errors import ModelError, StoreError, UsageError
from memos_cli.plaintext.units import MemoryUnit, iso, new_id, utcnow

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator, ModelIdentity
    from memos_cli.models.kvcache import KVFile
    from memos_cli.store.policy import HeatPolicy
    from memos_cli.store.store import MemoryStore
from memos_cli.store.caches import Activation, Selection, kv_dir, model_label, records, remove_unreferenced, write_records

ANSWER_ROOM = 128  # tokens a head must leave free in the context for a question and an answer


# ---- building -----------------------------------------------------------------


def select_units(store: MemoryStore, cube: str, selection: Selection) -> list[MemoryUnit]:
    """The units a selection holds now, in head order."""
    from memos_cli.plaintext.retrieval import Filters

    now = utcnow()
    if selection.query is not None:
        return [h.unit for h in store.recall(selection.query, selection.k, Filters(cube=cube), context=False)]
    if not selection.pinned:
        store._ensure_current()
        return hot_units(store, cube, replace(store.config.consolidate.heat, activation_top=selection.top or 0), now)
    live = [u for u in store.list(Filters(cube=cube, pinned=True), limit=0)
            if u.expires_at is None or u.expires_at > now]
    return _in_time_order(live, now)


def _in_time_order(units: list[MemoryUnit], now: datetime) -> list[MemoryUnit]:
    return sorted(units, key=lambda u: (u.time or u.created_at or now, u.id))


def heat_selection(units: list[MemoryUnit], policy: HeatPolicy, now: datetime) -> list[MemoryUnit]:
    """A heat block: the pinned units (always in context), in time order, then the
    ``policy.activation_top`` hottest of the others (``[consolidate.heat]`` weights),
    hottest first. Left out: units unused for ``cold_after_days`` (they are cold),
    and facts whose validity has closed (superseded)."""
    from memos_cli.plaintext.heat import hottest, last_used

    pinned = [u for u in units if u.pinned]
    cold = timedelta(days=policy.cold_after_days) if policy.cold_after_days > 0 else None
    warm = [u for u in units if not u.pinned and (u.valid_to is None or u.valid_to > now)
            and (cold is None or (used := last_used(u)) is None or now - used <= cold)]
    return _in_time_order(pinned, now) + hottest(warm, policy.activation_top, now=now, weights=policy.weights)


HEAT_COLUMNS = ("id", "pinned", "importance", "access_count", "last_accessed", "created_at", "time", "valid_to")
HEAT_MARGIN = 1e-9  # heat computed in numpy may differ from ``plaintext.heat`` in the last bits; this covers it


def hot_units(store: MemoryStore, cube: str, policy: HeatPolicy, now: datetime,
              leave_out: set[str] | frozenset[str] = frozenset()) -> list[MemoryUnit]:
    """``heat_selection`` of the cube's active units not expired at ``now`` (less ``leave_out``), without
    reading them all: the few scalar columns heat needs are read for every unit (no text, no vectors, no
    objects: 100k units in about 0.1 s), heat is worked out in numpy, and only the pinned units and those
    within ``HEAT_MARGIN`` of the top are read whole and ranked by ``plaintext.heat`` itself, so the choice and
    order are exactly those of ``heat_selection`` over every unit. Pending access counts count, as in
    ``MemoryStore.list``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from memos_cli.plaintext.heat import hottest
    from memos_cli.plaintext.sql import sql_str, sql_time
    from memos_cli.plaintext.units import parse_time

    where = f"status = 'active' AND cube = {sql_str(cube)} AND (expires_at IS NULL OR expires_at > {sql_time(now)})"
    table = store.table.select(where, columns=store.table.present(list(HEAT_COLUMNS)))
    ids = table.column("id").to_pylist() if table.num_rows else []
    if not ids:
        return []

    def micros(name: str) -> tuple[np.ndarray, np.ndarray]:  # (µs since the epoch, present)
        column = table.column(name)
        return (pc.fill_null(column.cast(pa.int64()), 0).to_numpy().astype(np.int64, copy=True),
                column.is_valid().to_numpy(zero_copy_only=False).astype(bool, copy=True))

    def numbers(name: str, default: float) -> np.ndarray:
        if name not in table.column_names:
            return np.full(len(ids), default)
        return pc.fill_null(table.column(name).cast(pa.float64()), default).to_numpy().astype(np.float64, copy=True)

    count = numbers("access_count", 0.0)
    importance = np.clip(np.round(numbers("importance", 0.5), 6), 0.0, 1.0)  # as from_row and heat read it
    pinned = numbers("pinned", 0.0) > 0
    last, has_last = micros("last_accessed")
    created, has_created = micros("created_at")
    when, has_when = micros("time")
    closes, closed = micros("valid_to")
    pending = store.pending_access()
    if pending:
        for i, uid in enumerate(ids):
            if uid in pending:  # as MemoryStore._with_pending: more accesses, and the last one now
                n, stamp = pending[uid]
                count[i] += n
                last[i], has_last[i] = _micros(parse_time(stamp)), True
    used = np.where(has_last, last, np.where(has_created, created, when))
    has_used = has_last | has_created | has_when
    now_us = _micros(now)
    out = np.array([uid in leave_out for uid in ids]) if leave_out else np.zeros(len(ids), dtype=bool)
    warm = ~pinned & ~out & (~closed | (closes > now_us))
    if policy.cold_after_days > 0:
        warm &= ~has_used | (now_us - used <= _micros_in(timedelta(days=policy.cold_after_days)))
    weights = policy.weights
    age_days = np.maximum(0.0, (now_us - used) / 1e6 / 86400.0)
    recency = np.where(has_used, 0.5 ** (age_days / weights.half_life_days), 0.0)
    access = count / (count + weights.access_half)
    total = weights.access + weights.recency + weights.importance
    score = (weights.access * access + weights.recency * recency + weights.importance * importance) / total
    candidates = np.flatnonzero(warm)
    top = policy.activation_top
    if top == 0:
        candidates = candidates[:0]
    elif len(candidates) > top:
        bar = -np.partition(-score[candidates], top - 1)[top - 1]  # the top-th highest heat
        candidates = candidates[score[candidates] >= bar - HEAT_MARGIN]
    # The few near the top, ranked exactly (ties by id) from just the columns heat reads.
    rows = table.take(pa.array(candidates, type=pa.int64())).to_pylist()
    for row, i in zip(rows, candidates.tolist(), strict=True):
        if ids[i] in pending:
            row["access_count"], row["last_accessed"] = int(count[i]), parse_time(pending[ids[i]][1])
    standins = [MemoryUnit(id=r["id"], text="", importance=round(float(r["importance"] if r.get("importance")
                                                                       is not None else 0.5), 6),
                           access_count=int(r.get("access_count") or 0), last_accessed=r.get("last_accessed"),
                           created_at=r.get("created_at"), time=r.get("time")) for r in rows]
    chosen = [u.id for u in hottest(standins, top, now=now, weights=weights)]
    wanted = [ids[i] for i in np.flatnonzero(pinned & ~out).tolist()] + chosen
    return heat_selection(store._with_pending(store._units_by_id(wanted)), policy, now)


def _micros(dt: datetime) -> int:
    from datetime import UTC

    return _micros_in((dt if dt.tzinfo else dt.replace(tzinfo=UTC)) - datetime(1970, 1, 1, tzinfo=UTC))


def _micros_in(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def check_fits(n_tokens: int, n_ctx: int) -> None:
    if n_tokens + ANSWER_ROOM > n_ctx:
        raise UsageError(
            f"the memory block is {n_tokens} tokens, too long for a context of {n_ctx} "
            f"(it must leave {ANSWER_ROOM} for the question and answer): use --ctx, or fewer units"
        )


def build(store: MemoryStore, generator: Generator, cube: str, selection: Selection,
          units: list[MemoryUnit] | None = None) -> Activation:
    """Prefill a block of memory and save its KV state; replaces the cube's previous
    activation of the same selection on the same model. ``units``: the selection's
    units, when the caller has just worked them out (else they are selected here)."""
    import time

    from memos_cli.activation.prompt import head_text
    from memos_cli.models import kvcache

    units = select_units(store, cube, selection) if units is None else units
    if not units:
        what = {True: "pinned memories"}.get(selection.pinned, "memories")
        raise UsageError(f"no {what} in cube {cube!r} to build an activation memory from"
                         + (" (pin some with `memos pin ID`)" if selection.pinned else ""))
    text = head_text(units)
    tokens = generator.tokenize(text, head=True)
    check_fits(len(tokens), generator.n_ctx)
    # "steering" only when vectors are applied: records made before it existed stay equal to new ones
    identity = {k: v for k, v in generator.identity.to_json().items() if k != "path" and (k != "steering" or v)}
    started = time.perf_counter()
    kept = _prefill(store, generator, cube, selection, identity, tokens)
    state = generator.save_state()
    sources = [{"id": u.id, "version": u.version} for u in units]
    record = Activation(
        id=new_id(), cube=cube, selection=selection, sources=sources, sha256="", bytes=0,
        n_tokens=len(tokens), model=identity, created_at=utcnow(), preamble=text,
    )
    meta = {"model": identity, "units": sources, "cube": cube, "selection": selection.to_json(),
            "created_at": iso(record.created_at), "activation": record.id}
    with store.locked():
        why = changed_sources(store, cube, selection, sources)  # a write while this one prefilled
        if why:
            raise StoreError(f"the memory changed while the block was prefilled ({why}); nothing was saved, build again")
        record.sha256, record.bytes, _ = kvcache.write(kv_dir(store), state, tokens, meta)
        record.build_seconds = time.perf_counter() - started
        record.extra["kept_tokens"] = kept
        current = records(store)
        replaced = [a for a in current if a.cube == cube and a.selection == selection and a.model == identity]
        keep = [a for a in current if a not in replaced] + [record]
        write_records(store, keep)
        remove_unreferenced(store, keep, {a.sha256 for a in replaced})
    record.extra["replaced"] = [a.id for a in replaced]
    return assess(store, record, generator.identity)


def _prefill(store: MemoryStore, generator: Generator, cube: str, selection: Selection, identity: dict[str, Any],
             tokens: list[int]) -> int:
    """Prefill ``tokens``, from the block this build replaces when the two start alike (a heat block
    that grew by a few units at its end): only what differs is evaluated. Returns the tokens kept."""
    from memos_cli.models import kvcache

    previous = next((a for a in records(store) if a.cube == cube and a.selection == selection
                     and a.model == identity), None)
    if previous is not None:
        try:
            kv = kvcache.read(kv_dir(store), previous.sha256)
        except kvcache.CacheError:
            kv = None  # missing or damaged: prefill from empty
        if kv is not None:
            try:
                return generator.prefill_from(kv.state, kv.tokens, tokens)
            except ModelError:  # llama.cpp refused the old state
                pass
    generator.prefill(tokens)
    return 0


# ---- is it usable? ------------------------------------------------------------------


def assess(store: MemoryStore, record: Activation, identity: ModelIdentity | None = None) -> Activation:
    """Fill in ``record.status`` and ``record.reason``.

    ``missing`` (no file), ``other model`` (built for another model file or
    context size than ``identity``), ``stale`` (a source unit changed, is gone
    or no longer active; for a pinned block, the pinned set changed), or
    ``current``. Damage (a bad hash) is found when the file is read.
    """
    from memos_cli.models.kvcache import file_name

    record.status, record.reason = "current", ""
    if not (kv_dir(store) / file_name(record.sha256)).is_file():
        record.status, record.reason = "missing", "its cache file is missing"
        return record
    if identity is not None and not record.matches(identity):
        record.status = "other model"
        same_model = record.model.get("sha256") == identity.sha256 and record.model.get("n_ctx") == identity.n_ctx
        if same_model:  # only the steering vectors differ
            record.reason = ("built without steering vectors, and this chat applies some" if identity.steering
                             else "built under steering vectors that this chat does not apply")
        else:
            record.reason = f"built for {model_label(record.model)}"
        return record
    why = changed_sources(store, record.cube, record.selection, record.sources)
    if why:
        record.status, record.reason = "stale", why
    return record


def changed_sources(store: MemoryStore, cube: str, selection: Selection, sources: list[dict[str, Any]]) -> str | None:
    """How the units a block was built from differ from the store now, or None."""
    from memos_cli.plaintext.retrieval import Filters

    now = {u.id: u for u in store.get_many([s["id"] for s in sources])}
    for source in sources:
        unit = now.get(source["id"])
        if unit is None:
            return f"unit {source['id']} is gone"
        if unit.status != "active":
            return f"unit {unit.id} is {unit.status}"
        if unit.version != source["version"]:
            return f"unit {unit.id} changed (version {source['version']} -> {unit.version})"
    if selection.pinned:
        pinned = {u.id for u in store.list(Filters(cube=cube, pinned=True), limit=0)}
        if pinned != {s["id"] for s in sources}:
            return "the cube's pinned memories changed"
    return None


def load(store: MemoryStore, record: Activation, generator: Generator, head_tokens: list[int]) -> KVFile:
    """Read, verify and restore a cache into ``generator``; ``CacheError`` says why not.

    The file must hash to its name, name this model in its metadata, and hold
    exactly ``head_tokens`` (the head as it renders now).
    """
    from memos_cli.models import kvcache

    kv = kvcache.read(kv_dir(store), record.sha256)
    model = kv.meta.get("model") or {}
    if model.get("sha256") != generator.identity.sha256 or model.get("n_ctx") != generator.n_ctx:
        raise kvcache.CacheError(f"cache file {kv.sha256[:12]} was built for {model_label(model)}")
    if model.get("steering", "") != generator.identity.steering:
        raise kvcache.CacheError(f"cache file {kv.sha256[:12]} was built under other steering vectors")
    if kv.tokens != head_tokens:
        raise kvcache.CacheError(f"cache file {kv.sha256[:12]} holds other tokens than the memory block renders to now")
    try:
        generator.load_state(kv.state, kv.tokens)
    except ModelError as exc:  # llama.cpp refused the state: another build of llama.cpp, say
        raise kvcache.CacheError(f"cache file {kv.sha256[:12]}: {exc}") from None
    return kv
