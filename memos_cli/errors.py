"""Errors the user can act on.

Every failure that reaches the command line is a ``MemosError``: the CLI prints
its message as one line on stderr and exits with ``exit_code``. Anything else
is a bug and is reported as such.
"""

from __future__ import annotations


class MemosError(Exception):
    """A failure with a message meant for the user."""

    exit_code = 1


class UsageError(MemosError):
    """Bad input from the user: a value, a file, a flag."""

    exit_code = 2


class NotFoundError(MemosError):
    """An id or a path that does not exist."""

    exit_code = 3


class LockedError(MemosError):
    """Another writer holds the store's lock past the wait limit."""

    exit_code = 4


class StoreError(MemosError):
    """The store cannot be used: not a store, not writable, too new, damaged."""

    exit_code = 5


class ModelError(MemosError):
    """A model file that is missing, unreadable or of the wrong kind."""

    exit_code = 6


class Cancelled(MemosError):
    """The user said no when asked to confirm; nothing changed."""

    exit_code = 1


class RemoteError(MemosError):
    """A remote that cannot be reached or is not a memos store, or a sync refused (purged history)."""

    exit_code = 7
