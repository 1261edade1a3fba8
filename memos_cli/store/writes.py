"""The writes of memory: add, import, edit, forget, pin, rollback, settings; and embedding."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from memos_cli.errors import StoreError, UsageError
from memos_cli.plaintext import files
from memos_cli.plaintext.units import MemoryUnit, build_unit, utcnow
from memos_cli.store import layout, params
from memos_cli.store.config import CONFIG_NAME, StoreConfig
from memos_cli.store.policy import toml_literal

if TYPE_CHECKING:
    from memos_cli.privacy.guard import Guard, Screening

EMBED_BATCH = 256


class Writes:
    """``MemoryStore``'s writes (a mixin: ``self`` is the store); each is one transaction."""

    def guard(self, privacy: dict[str, str] | None = None) -> Guard:
        """The privacy guard of one write: the store's ``[privacy]`` policy under a command's
        override (``privacy.policy.parse_override``)."""
        from memos_cli.privacy.guard import Guard
        from memos_cli.privacy.policy import PrivacyPolicy

        return Guard(self.config.privacy if self.exists() else PrivacyPolicy(), privacy)

    def add(self, text: str, *, privacy: dict[str, str] | None = None, **fields: Any) -> MemoryUnit:
        """Add one unit; see ``build_unit`` for the fields. Its text and meta are screened
        first (``privacy``: the command's override of the policy)."""
        unit = build_unit(text, **fields)
        self.preload_embedder()  # loads (llama.cpp, without the GIL) while the detectors are imported
        guard = self.guard(privacy)
        guard.unit(unit)
        self._write_new([unit], op="add", screening=guard.screening)
        return unit

    def import_records(
        self,
        records: Iterable[tuple[int | str, Any]],
        *,
        defaults: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
        privacy: dict[str, str] | None = None,
    ) -> list[MemoryUnit]:
        """Import (line number or where, JSON object) pairs as new units, all in one commit or none.

        Every record is validated and screened (``privacy``: the command's
        override of the policy) before anything is written; the first bad
        one raises ``UsageError`` naming its line (or the ``where`` given).
        """
        self.preload_embedder()  # loads (llama.cpp, without the GIL) while the detectors are imported
        guard = self.guard(privacy)
        allowed = {"text", "time", "kind", "tags", "meta", "sources", "cube", "user", "importance", "ttl", "pinned"}
        defaults = defaults or {}
        now = utcnow()
        units: list[MemoryUnit] = []
        for lineno, rec in records:
            where = f"line {lineno}" if isinstance(lineno, int) else str(lineno)
            if not isinstance(rec, dict):
                raise UsageError(f"{where}: expected a JSON object")
            unknown = set(rec) - allowed
            if unknown:
                raise UsageError(f"{where}: unknown field {sorted(unknown)[0]!r}")
            if "text" not in rec:
                raise UsageError(f"{where}: missing \"text\"")
            args = {**defaults, **{k: v for k, v in rec.items() if k != "text" and v is not None}}
            try:
                unit = build_unit(rec["text"], now=now, **args)
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
            guard.unit(unit, where)
            units.append(unit)
        if not units:
            raise UsageError("nothing to import: the input has no records")
        self._write_new(units, op="import", progress=progress, screening=guard.screening)
        return units

    def import_units(
        self,
        units: list[MemoryUnit],
        *,
        where: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        privacy: dict[str, str] | None = None,
        parametric: list[tuple[Any, bytes]] | None = None,
    ) -> dict[str, Any]:
        """Merge whole units (a memos export or pack: ids, versions and times kept) into the store
        by id, with any parametric memories (``parametric``: (record, blob) pairs), in one commit or none.

        A unit the store lacks is added as it is; one it has with every field equal is left as it
        is; any other is merged (``plaintext.merge.merge2``: the newer side's fields, tags and meta
        united). Units that come with a vector of the store's embedding model keep it; the others
        are embedded, before the lock. Every unit is screened first (``where[i]`` names unit i in
        errors). Returns the ids ``added`` and ``updated``, the count ``unchanged``, the ``params``
        written and the ``commit`` (None when nothing changed).
        """
        from memos_cli.plaintext.merge import merge2, same_unit

        seen: set[str] = set()
        for i, unit in enumerate(units):
            if unit.id in seen:
                raise UsageError(f"{where[i] if where else unit.id}: unit {unit.id} appears twice")
            seen.add(unit.id)
        self.preload_embedder()
        guard = self.guard(privacy)
        for i, unit in enumerate(units):
            guard.unit(unit, where[i] if where else unit.id)

        def plan() -> tuple[list[MemoryUnit], list[MemoryUnit], int]:
            have = {u.id: u for u in self._units_by_id([u.id for u in units])} if self.table.exists() else {}
            added, updated = [], []
            for unit in units:
                current = have.get(unit.id)
                if current is None:
                    added.append(unit)
                    continue
                merged = merge2(current, unit)
                if not same_unit(current, merged):
                    merged.vector, merged.model = (current.vector, current.model) if merged.text == current.text else (
                        (unit.vector, unit.model) if merged.text == unit.text else (None, ""))
                    updated.append(merged)
            return added, updated, len(units) - len(added) - len(updated)

        from memos_cli.store.follow import attach_vectors

        exists = self.exists()
        added, updated, unchanged = plan() if exists else (list(units), [], 0)
        model = self.embedder.model_id
        for unit in (*added, *updated):
            if unit.vector is not None and unit.model != model:
                unit.vector, unit.model = None, ""
        if exists:  # vectors the table has for unchanged texts are kept; the rest embedded
            attach_vectors(self, [*added, *updated], progress)
        else:
            self.embed([u for u in added if u.vector is None], progress)
        result: dict[str, Any] = {"added": [], "updated": [], "unchanged": unchanged, "params": [], "commit": None}
        if not added and not updated and not parametric:
            return result
        with self.transaction("import", cube=",".join(sorted({u.cube for u in units})) or "default") as txn:
            if self.table.exists():  # as of now, under the lock: another write may have landed since the plan
                vectors = {(u.id, u.text): (u.vector, u.model) for u in (*added, *updated) if u.vector is not None}
                added, updated, unchanged = plan()
                for unit in (*added, *updated):
                    if unit.vector is None and (unit.id, unit.text) in vectors:
                        unit.vector, unit.model = vectors[(unit.id, unit.text)]
                self.embed([u for u in (*added, *updated) if u.vector is None])  # only when the store changed meanwhile
            self.save(txn, added, new=True)
            self.save(txn, updated)
            if parametric:
                result["params"] = params.merge_in(self, txn, parametric)
            txn.ids = [u.id for u in (*added, *updated)]
            txn.summary = f"{len(added)} units added, {len(updated)} merged by id"
            if result["params"]:
                txn.summary += f", {len(result['params'])} parametric memories"
                txn.details.append("parametric memories: " + " ".join(result["params"]))
            guard.screening.record(txn)
        if notice := guard.screening.notice():
            self.notices.append(notice)
        result.update(added=[u.id for u in added], updated=[u.id for u in updated], unchanged=unchanged,
                      commit=txn.commit)
        return result

    def add_built(self, units: list[MemoryUnit], screening: Screening | None = None) -> None:
        """Write units already built (``build_unit``) and screened, as one ``add`` commit: a
        server's adds that arrived together. Units without a vector are embedded first."""
        self._write_new(units, op="add", screening=screening)

    def _write_new(
        self, units: list[MemoryUnit], *, op: str, progress: Callable[[int, int], None] | None = None,
        screening: Screening | None = None,
    ) -> None:
        cubes = sorted({u.cube for u in units})
        users = sorted({u.user for u in units})
        # Embed before taking the lock: the slow part should not block other writers.
        self.embed([u for u in units if u.vector is None], progress)
        with self.transaction(op, cube=",".join(cubes), user=",".join(users)) as txn:
            self.save(txn, units, new=True)
            txn.ids = [u.id for u in units]
            if screening is not None:
                screening.record(txn)
        if screening is not None and (notice := screening.notice()):
            self.notices.append(notice)

    def edit(self, uid: str, changes: dict[str, Any], *, expect_version: int | None = None,
             privacy: dict[str, str] | None = None) -> MemoryUnit | None:
        """Change a unit's fields; a new version of it. Returns it, or None when nothing changed.

        ``changes`` holds validated values for any of text, kind, tags, meta,
        importance, time, expires_at, valid_from, valid_to. A new text and meta
        are screened first (``privacy``: the command's override of the policy).
        A changed text is re-embedded. With ``expect_version``, refuses when
        someone else changed the unit meanwhile (an editor session).
        """
        editable = {"text", "kind", "tags", "meta", "importance", "time", "expires_at", "valid_from", "valid_to"}
        unknown = sorted(set(changes) - editable)
        if unknown:
            raise UsageError(f"{unknown[0]!r} cannot be edited")
        current = self.get(uid)
        changes = {k: v for k, v in changes.items() if getattr(current, k) != v}
        if not changes:
            return None
        # Only what is new is screened: a changed text, and the meta entries added or changed (what
        # was stored before, under another policy or an override, is `memos scan`'s to report).
        if "text" in changes:
            self.preload_embedder()  # a new text is embedded: the model loads while it is screened
        guard = self.guard(privacy) if privacy or "text" in changes or "meta" in changes else None
        if guard is not None and "text" in changes:
            changes["text"] = guard.text(changes["text"], "the new text")
        if guard is not None and "meta" in changes:
            meta: dict[str, Any] = {}
            for key, value in changes["meta"].items():
                same = key in current.meta and current.meta[key] == value
                meta.update({key: value} if same else guard.value({key: value}, "meta"))
            changes["meta"] = meta
        vector = None
        if "text" in changes:  # embed before the lock
            vector = self.embedder.embed([changes["text"]])[0].tolist()
        with self.transaction("edit", cube=current.cube) as txn:
            unit = self._units_by_id([current.id])[0]  # as of now, under the lock
            if expect_version is not None and unit.version != expect_version:
                raise StoreError(f"{unit.id} changed while you edited it (now version {unit.version}); "
                                 "nothing was saved, edit it again")
            for key, value in changes.items():
                setattr(unit, key, value)
            if vector is not None:
                unit.vector, unit.model = vector, self.embedder.model_id
            unit.version += 1
            unit.updated_at = utcnow()
            self.save(txn, [unit])
            txn.ids = [unit.id]
            txn.details.append(f"{unit.id}: version {unit.version}, changed {', '.join(sorted(changes))}")
            if guard is not None:
                guard.screening.record(txn)
        if guard is not None and (notice := guard.screening.notice()):
            self.notices.append(notice)
        return unit

    def forget(self, ids: list[str]) -> list[MemoryUnit]:
        """Soft-delete units (status ``deleted``): gone from recall, kept in history.

        Returns the units forgotten now (those already forgotten are left as they are).
        """
        found = {u.id: u for u in (self.get(uid) for uid in ids)}  # every id must exist, before anything changes
        wanted = list(found)
        with self.transaction("forget", cube=",".join(sorted({u.cube for u in found.values()}))) as txn:
            units = [u for u in self._units_by_id(wanted) if u.status != "deleted"]
            now = utcnow()
            for unit in units:
                unit.status = "deleted"
                unit.version += 1
                unit.updated_at = now
            self.save(txn, units)
            txn.ids = [u.id for u in units]
        return units

    def pin(self, ids: list[str], pinned: bool = True) -> list[MemoryUnit]:
        """Pin units (``pinned=False``: unpin them), in one commit (op ``pin`` or ``unpin``).

        Pinned units are always in context: they make up their cube's
        activation memory. Pinning is placement, not content: like access
        counts, it changes neither ``version`` nor ``updated_at``. Every id
        (or unique prefix) must name a unit before anything changes, and only
        active units can be pinned. Units already in that state are left as
        they are; returns the units changed, and when there are none makes no
        commit and returns [].
        """
        if not isinstance(pinned, bool):
            raise UsageError(f"bad pinned {pinned!r}: use true or false")
        if not ids:
            raise UsageError(f"give the ids of the memories to {'pin' if pinned else 'unpin'}")
        found = {u.id: u for u in (self.get(uid) for uid in ids)}  # every id must exist, before anything changes
        if pinned:
            for unit in found.values():
                if unit.status != "active":
                    raise UsageError(f"{unit.id} is {unit.status}; only active memories can be pinned")
        if all(u.pinned == pinned for u in found.values()):
            return []
        op = "pin" if pinned else "unpin"
        with self.transaction(op, cube=",".join(sorted({u.cube for u in found.values()}))) as txn:
            units = [u for u in self._units_by_id(list(found)) if u.pinned != pinned]  # as of now, under the lock
            for unit in units:
                unit.pinned = pinned
            self.save(txn, units)
            txn.ids = [u.id for u in units]
        return units

    def rollback(self, rev: str) -> dict[str, Any]:
        """A new commit that puts every unit, and every parametric memory, back as it was at ``rev``;
        history is kept."""
        from memos_cli.store.follow import attach_vectors

        target = self.repo.resolve(rev)

        def plan(head: str) -> tuple[list[MemoryUnit], list[str]]:
            changes = self.repo.changed(head, target, files.UNITS_DIR)
            restore = [path for status, path in changes if status != "D"]
            remove = [uid for status, path in changes if status == "D" and (uid := files.id_of(path))]
            units = self.repo.units_at(target, restore)
            attach_vectors(self, units)  # old texts are embedded again: before the lock when we can
            return units, remove

        self._ensure_current()
        planned_at = self.repo.head() or ""
        units, remove = plan(planned_at)
        with self.transaction("rollback", cube="*") as txn:
            head = self.repo.head() or ""
            if head != planned_at:  # another write landed meanwhile
                units, remove = plan(head)
            self._refuse_hand_edited(remove)  # save() checks the others
            self.save(txn, units)
            self.drop(txn, remove)
            learned = params.restore_at(self, txn, target)  # parametric memory is memory too
            txn.ids = [u.id for u in units] + remove
            txn.summary = f"to {target[:10]}, {len(txn.ids)} units changed"
            if learned:
                txn.summary += f", {len(learned)} parametric memor{'y' if len(learned) == 1 else 'ies'}"
                txn.details.append("parametric memories: " + " ".join(learned))
            txn.trailers["Memos-Target"] = target
        return {"target": target, "commit": txn.commit, "restored": [u.id for u in units], "removed": remove,
                "params": learned}

    def set_config(self, key: str, value: Any = None, *, unset: bool = False) -> dict[str, Any]:
        """Set one setting of memos.toml (``unset``: back to its default) in one commit (op ``config``).

        ``key`` is dotted (``recall.k``, ``consolidate.duplicates.similarity``).
        The whole resulting config is checked before anything is written: an
        unknown key, a bad value or a read-only setting raises ``UsageError``
        and changes nothing. A value equal to the current one (an unset of a
        setting at its default) makes no commit. Returns the key, the ``old``
        and new ``value``, its ``default``, whether it ``changed`` and the
        ``commit``.
        """

        def change(config: StoreConfig) -> StoreConfig:
            return config.without(key) if unset else config.with_value(key, value)

        def unchanged(old: StoreConfig, new: StoreConfig) -> bool:
            if unset:  # back to the default: nothing to do when the file would stay as it is
                return new.to_toml() == old.to_toml()
            return new.get(key).value == old.get(key).value

        current = self.config  # a missing store or a too-new one fails here, before any work
        new = change(current)  # bad keys and values fail here, before the lock
        result = {"key": key, "old": current.get(key).value, "value": new.get(key).value,
                  "default": new.get(key).default, "changed": False, "commit": None}
        if unchanged(current, new):
            return result
        try:
            with self.transaction("config", cube="*") as txn:
                self._config = None  # memos.toml as of now, under the lock
                current = self.config
                new = change(current)
                result.update(old=current.get(key).value, value=new.get(key).value)
                if not unchanged(current, new):
                    self._note_paths(txn, [CONFIG_NAME])
                    tmp = self.root / files.temp_path(CONFIG_NAME)
                    tmp.write_text(new.to_toml(), encoding="utf-8")
                    os.replace(tmp, self.config_path)
                    shown = toml_literal(result["value"])
                    txn.summary = f"unset {key} (default {shown})" if unset else f"set {key} = {shown}"
                    txn.details.append(f"{key}: {toml_literal(result['old'])} -> {shown}")
                    txn.trailers["Memos-Setting"] = key
        finally:
            self._config = None  # read again when next needed (a failed write has put the file back)
        result.update(changed=txn.commit is not None and CONFIG_NAME in txn.paths, commit=txn.commit)
        return result

    def check_dim(self) -> None:
        """Vectors of another width than the table's cannot be stored or searched."""
        if self.table.exists() and self.table.dim != self.embedder.dim:  # dim is None without a table
            raise StoreError(
                f"the store's vectors have {self.table.dim} dimensions but the embedding model "
                f"{self.embedder.model_id} makes {self.embedder.dim}; set [embedding] model in "
                f"{self.config_path} back to the model the store was built with, or rebuild the "
                "search table with `memos check --repair`"
            )

    def embed(self, units: list[MemoryUnit], progress: Callable[[int, int], None] | None = None) -> None:
        """Give these units vectors from the store's embedding model."""
        if not units:
            return
        embedder = self.embedder
        total = len(units)
        done = 0
        for chunk in layout.chunks(units, EMBED_BATCH):
            vectors = embedder.embed([u.text for u in chunk])
            for unit, vec in zip(chunk, vectors, strict=True):
                unit.vector = vec.tolist()
                unit.model = embedder.model_id
            done += len(chunk)
            if progress:
                progress(done, total)
