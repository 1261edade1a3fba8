"""Named points where the crash tests kill a write, to prove that the next command puts the store right.

``MEMOS_TEST_KILL_AT=<point>`` makes the process SIGKILL itself on reaching
that point, as a power cut or ``kill -9`` would stop it there: no ``finally``,
no ``atexit``. Unset (always, outside tests), a point costs one environment
lookup. The points:

- ``written``: a transaction has written its files and table rows, not committed;
- ``committed``: it has committed; the table's marker and the journal not yet updated;
- ``purge.started``: a purge has written its own journal, nothing else;
- ``purge.rewritten``: a purge has rewritten history, not yet expired the reflogs or pruned;
- ``purge.pruned``: a purge has pruned the old objects, not yet dropped its journal;
- ``sync.fetched``: a sync has fetched the remote, merged nothing;
- ``sync.merged``: a sync has merged (its transaction passed ``written`` and ``committed``), not pushed;
- ``sync.pushed``: a sync has pushed, not yet pruned what a rewrite of the remote left.

A purge that finishes an interrupted one (``purge.resume``) passes the same points.
"""

from __future__ import annotations

import os
import signal

ENV = "MEMOS_TEST_KILL_AT"


def reached(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
