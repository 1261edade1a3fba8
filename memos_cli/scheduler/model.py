"""The chat model, loaded once and only if a step needs it, and the LLM judge's remembered verdicts.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING

from memos_cli.errors import MemosError
from memos_cli.plaintext.units import MemoryUnit
from memos_cli.scheduler.report import StepSkipped

if TYPE_CHECKING:
    from memos_cli.models.generator import Generator
    from memos_cli.store.store import MemoryStore

VERDICTS_FILE = "judge.jsonl"  # in the state dir: the LLM judge's verdicts
VERDICTS_MAX = 20_000  # verdicts kept (the newest); about 3 MB


# ---- the chat model, loaded once, only if a step needs it ---------------------------------


class ModelSlot:
    """The chat model of ``[chat]``, loaded on first use; a load that fails is remembered."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._gen: Generator | None = None
        self._error: str | None = None
        self._loading: threading.Thread | None = None

    def preload(self) -> None:
        """Start loading the model in a thread, for a step that will likely need it: llama.cpp reads
        the file without the GIL, so the run goes on meanwhile (``get`` waits for it)."""
        if self._gen is not None or self._error is not None or self._loading is not None:
            return
        from memos_cli.chat.session import chat_settings
        from memos_cli.models.generator import load_generator
        from memos_cli.models.runtime import import_llama_cpp

        spec, size = chat_settings(self.store, None, None)
        try:
            import_llama_cpp()  # here: two threads importing at once can deadlock on import locks
        except MemosError:
            return  # get() says why

        def load() -> None:
            try:
                self._gen = load_generator(spec, n_ctx=size)
            except MemosError as exc:
                self._error = str(exc)
            except Exception as exc:  # noqa: BLE001 - told by get(), in the caller's thread
                self._error = f"{type(exc).__name__}: {exc}"

        self._loading = threading.Thread(target=load, daemon=True)
        self._loading.start()

    def _wait(self) -> None:
        if self._loading is not None:
            self._loading.join()
            self._loading = None

    def get(self, why: str) -> Generator:
        self._wait()
        if self._gen is None and self._error is None:
            from memos_cli.chat.session import chat_settings
            from memos_cli.models.generator import load_generator

            spec, size = chat_settings(self.store, None, None)
            try:
                self._gen = load_generator(spec, n_ctx=size)
            except MemosError as exc:
                self._error = str(exc)
        if self._gen is None:
            raise StepSkipped(f"{why}: the chat model cannot be loaded ({self._error})")
        return self._gen

    def identity(self, why: str) -> str:
        """The chat model file's sha256, without loading it (``StepSkipped`` when there is no model)."""
        from memos_cli.chat.session import chat_settings
        from memos_cli.models.generator import identify

        spec, size = chat_settings(self.store, None, None)
        try:
            return identify(spec, size).sha256
        except MemosError:
            self.get(why)  # says why, as a load would
            raise

    def close(self) -> None:
        self._wait()
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def complete(gen: Generator, prompt: str, max_tokens: int, stop: list[str]) -> str:
    """The model's greedy continuation of a plain prompt."""
    tokens = gen.tokenize(prompt, head=True)
    gen.prefill([])  # a fresh context: nothing of a previous prompt is reused by mistake
    return "".join(gen.stream(tokens, temperature=0.0, max_tokens=max_tokens, stop=stop)).strip()


class Verdicts:
    """The LLM judge's verdicts, kept so that it never asks about the same pair twice: lines of
    ``VERDICTS_FILE`` in the state dir, keyed by both units' id and version and by the model file's
    sha256 and the prompt's (a unit that changes gets a new version, and so a new question). Ids,
    versions and yes/no only: no text of the memory, so purge has nothing to remove here. The newest
    ``VERDICTS_MAX`` are kept."""

    def __init__(self, store: MemoryStore, model: str) -> None:
        import hashlib

        from memos_cli.scheduler.supersede import judge_prompt

        self.path = store.state_dir / VERDICTS_FILE
        prompt = hashlib.sha256(judge_prompt("", "").encode()).hexdigest()[:12]
        self.model = f"{model[:16]}/{prompt}"
        self.lines: list[str] = []
        self.known: dict[tuple[str, int, str, int], bool] = {}
        self.new: list[str] = []
        try:
            self.lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            pass
        for line in self.lines:
            try:
                r = json.loads(line)
                if r["model"] == self.model:
                    self.known[(r["older"], int(r["ov"]), r["newer"], int(r["nv"]))] = bool(r["replaces"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line

    def get(self, older: MemoryUnit, newer: MemoryUnit) -> bool | None:
        return self.known.get((older.id, older.version, newer.id, newer.version))

    def put(self, older: MemoryUnit, newer: MemoryUnit, replaces: bool) -> bool:
        self.known[(older.id, older.version, newer.id, newer.version)] = replaces
        self.new.append(json.dumps({"older": older.id, "ov": older.version, "newer": newer.id, "nv": newer.version,
                                    "model": self.model, "replaces": replaces}))
        return replaces

    def save(self) -> None:
        """Append the new verdicts (a run holds the run lock: no other run writes meanwhile)."""
        if not self.new:
            return
        from memos_cli.plaintext.files import FILE_MODE, write_private

        try:
            if len(self.lines) + len(self.new) <= VERDICTS_MAX:
                with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "ab") as f:
                    f.write("".join(line + "\n" for line in self.new).encode())
            else:  # keep the newest, rewritten atomically
                keep = (self.lines + self.new)[-VERDICTS_MAX // 2:]
                tmp = self.path.with_name(f".{VERDICTS_FILE}.tmp")
                write_private(tmp, "".join(line + "\n" for line in keep).encode())
                os.replace(tmp, self.path)
        except OSError:
            pass  # not kept: the judge asks again next time
        self.lines += self.new
        self.new = []
