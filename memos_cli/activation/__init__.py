"""Activation memory: blocks of memory whose KV state is saved, so that a chat starts without
reading them again (``blocks``: selecting, building, loading, assessing), and the chat head they
cache (``prompt``). Their files and records are the store's (``memos_cli.store.caches``); the
names a caller needs are here as one API."""

from memos_cli.activation.blocks import (
                                         ANSWER_ROOM,
                                         assess,
                                         build,
                                         changed_sources,
                                         check_fits,
                                         heat_selection,
                                         hot_units,
                                         load,
                                         select_units,
)
from memos_cli.store.caches import (
                                         Activation,
                                         CacheProblem,
                                         Selection,
                                         drop_for_units,
                                         get,
                                         kv_dir,
                                         model_label,
                                         problems,
                                         records,
                                         remove,
                                         repair_locked,
)

__all__ = [
    "ANSWER_ROOM", "Activation", "CacheProblem", "Selection", "assess", "build", "changed_sources", "check_fits",
    "drop_for_units", "get", "heat_selection", "hot_units", "kv_dir", "load", "model_label", "problems", "records",
    "remove", "repair_locked", "select_units",
]
