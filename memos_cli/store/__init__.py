"""The memory directory: ``MemoryStore`` (``store``), a git repository of unit files written one
transaction at a time under a lock (``transaction``; each write's record and commit message:
``commit``), with its journal and recovery, access counts (``access``), writes and reads
(``writes``, ``reads``), the search table following HEAD (``follow``) and kept up after writes
(``upkeep``), memos.toml (``config``, ``policy``), git (``repo``), activation memory's files and
records (``caches``), where things are (``layout``), and the whole-store operations: ``check``,
``purge``, ``history``."""
