"""A few small columns of every row of one version of the units table, in memory.

Recall reads, besides its two searches, the life of its candidates (status,
expiry, validity) and the turns of the conversations its hits come from.
From Lance each of those reads costs 2-8 ms at 100k units, whatever it
returns (a scan or a take has its own fixed cost); from this index, a tenth
of a millisecond. Building it reads those columns once (30-60 ms and 10 MB
at 100k units), so the table builds it for a version only when a process
recalls a second time from that version (``UnitTable.row_index``): a server,
a batch, a chat session. A single recall from the command line does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Small columns: what recall asks of its candidates and their threads, and the short fields of a
# unit (the long ones, text, tags, meta, sources and the vector, are taken from Lance).
COLUMNS = ["id", "cube", "user", "time", "kind", "created_at", "status", "expires_at", "valid_to", "importance",
           "access_count", "pinned", "version"]


class RowIndex:
    """``COLUMNS`` and ``_rowid`` of every row of one Lance dataset, sorted by row id."""

    def __init__(self, ds: Any) -> None:
        import pyarrow.compute as pc

        names = set(ds.schema.names)  # a table not yet rebuilt in the current format lacks "pinned"
        table = ds.to_table(columns=[c for c in COLUMNS if c in names], with_row_id=True)
        self.table = table.take(pc.sort_indices(table.column("_rowid")))
        self.rowids = self.table.column("_rowid").to_numpy()
        self.columns = frozenset(self.table.column_names)

    def take(self, rowids: list[int], columns: list[str]) -> Any:
        """These rows' ``columns`` (an Arrow table), in the order given."""
        at = np.searchsorted(self.rowids, np.asarray(rowids, dtype=self.rowids.dtype))
        if len(at) and (at.max() >= len(self.rowids) or not np.array_equal(self.rowids[at], rowids)):
            raise KeyError("a row id that is not in the table's version")  # a bug, not bad input
        return self.table.select(columns).take(at)

    def episodes_at(self, times: list[Any], columns: list[str]) -> Any:
        """The episodes whose time is one of ``times`` (with ``_rowid``), as ``attach_context`` scans them."""
        import pyarrow as pa
        import pyarrow.compute as pc

        when = self.table.column("time")
        mask = pc.and_(pc.is_in(when, value_set=pa.array(times, when.type)),
                       pc.equal(self.table.column("kind"), "episode"))
        return self.table.filter(pc.fill_null(mask, False)).select([*columns, "_rowid"])
