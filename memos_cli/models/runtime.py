"""What every llama.cpp model in memos shares: importing llama_cpp lazily,
silencing its logs, and the number of threads to run on."""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from memos_cli.errors import ModelError

_log_callback: Any = None  # the no-op llama.cpp log callback; must stay referenced
_log_lock = threading.Lock()


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ModelError("llama-cpp-python is not installed; install it with: pip install llama-cpp-python") from None
    return llama_cpp


def silence_llama_logs() -> None:
    """Route llama.cpp/ggml logging to a no-op, once per process."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return
        llama_cpp = import_llama_cpp()

        @llama_cpp.llama_log_callback
        def _ignore(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            return None

        llama_cpp.llama_log_set(_ignore, ctypes.c_void_p(0))
        _log_callback = _ignore


def default_threads() -> int:
    """``$MEMOS_THREADS``, else the CPUs this process may run on. llama.cpp's threads spin while
    they wait for each other, so several processes each with a thread per core slow each other
    down far more than they gain (tests in parallel, several memos at once on a small machine)."""
    env = os.environ.get("MEMOS_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ModelError(f"bad MEMOS_THREADS {env!r}: use a whole number of threads") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
