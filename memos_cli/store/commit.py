"""``Transaction``: what one write did, and the commit message it becomes (its subject line, the ids,
the details, and the ``Memos-*`` trailers that history reads back)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Transaction:
    """What one write did; becomes the commit message."""

    op: str
    cube: str = "default"
    user: str = ""
    ids: list[str] = field(default_factory=list)
    summary: str = ""  # replaces the "N units" part of the first line
    details: list[str] = field(default_factory=list)  # more lines for the message body
    trailers: dict[str, str] = field(default_factory=dict)  # more Memos-* trailers
    folded_accesses: int = 0
    paths: set[str] = field(default_factory=set)  # files written or removed (units; memos.toml for op config)
    commit: str | None = None  # the new commit, once made
    allow_empty: bool = False  # commit even when no file changed
    after_commit: list[Callable[[], object]] = field(default_factory=list)  # run under the lock
    # No upkeep of the table after this write (``MemoryStore.upkeep``): a consolidate slice, whose run
    # merges fragments between its slices and leaves the indexes to its end.
    skip_upkeep: bool = False
    merged: str | None = None  # a second parent: the commit a sync merged in
    fast_forward: str | None = None  # no new commit: HEAD moves to this one (a sync), whose tree the write made

    def message(self) -> str:
        n = len(self.ids)
        what = self.summary or f"{n} unit{'s' if n != 1 else ''}"
        head = f"{self.op}: {what} (cube {self.cube}, user {self.user})"
        body = []
        if self.ids:
            shown = self.ids if n <= 20 else self.ids[:10] + ["..."] + self.ids[-5:]
            body.append("ids: " + " ".join(shown))
        body += self.details
        if self.folded_accesses:
            body.append(f"access counts folded in for {self.folded_accesses} units")
        trailers = [f"Memos-Op: {self.op}", f"Memos-Units: {n}", f"Memos-Cube: {self.cube}", f"Memos-User: {self.user}",
                    *[f"{key}: {value}" for key, value in self.trailers.items()]]
        return "\n\n".join([head, *(["\n".join(body)] if body else []), "\n".join(trailers)]) + "\n"
