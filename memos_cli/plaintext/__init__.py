"""Plaintext memory: what a memory is (``units``: ``MemoryUnit``, times, durations), its file
(``files``), the search table (``table``: Lance, with the full-text ``terms`` and a vector index),
recall over it (``retrieval``: filters, hybrid search, fusion, context), heat (``heat``: how much a
unit is in use) and the editor's form of a unit (``editing``).

It is what the store is made of, so it sits below ``memos_cli.store``: nothing here takes the
store's lock or makes a commit; the store does, with these."""
