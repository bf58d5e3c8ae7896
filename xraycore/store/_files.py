"""Data files written by workers and committed by one committer per run.

A batch task writes its rows as one Parquet file inside the table's folder,
under a name fixed by the run and the batch (``batches/<run>/<start>-<token>``),
and hands back a :class:`TableFile`: what a Delta ``add`` action needs (path,
size, statistics), a few hundred bytes, never the rows. The run's committer
(:meth:`xraycore.store._delta.VersionedTable.commit_files`) then commits the
files of many batches in one transaction. A file no commit lists is what a
failed or killed batch left; the run's end removes it
(:func:`xraycore.store._delta.VersionedTable.remove_uncommitted`).
"""

from __future__ import annotations

import io
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from xraycore.store.storage import Storage

__all__ = ["BATCHES", "TableFile", "run_folder", "write_table_file"]

#: The folder of a table that holds the files written by batch tasks, one
#: sub-folder per run.
BATCHES = "batches"
#: Longest string kept as a file's minimum or maximum (longer: none recorded).
_LONGEST_BOUND = 256


@dataclass(frozen=True)
class TableFile:
    """A data file written for a table and not yet committed: the fields of its
    Delta ``add`` action, its row count and its column names."""

    path: str  # relative to the table
    size: int
    modified_ms: int
    stats: str
    rows: int
    columns: tuple[str, ...]

    def add_action(self):
        from deltalake.transaction import AddAction

        return AddAction(self.path, self.size, {}, self.modified_ms, True, self.stats)


def run_folder(run_id: str) -> str:
    """The folder (relative to a table) of the files a run's batches write."""
    return f"{BATCHES}/{run_id}"


def write_table_file(
    storage: Storage, table_name: str, rows, *, run_id: str, part: int
) -> TableFile:
    """Write the pyarrow Table ``rows`` as a Parquet file of ``table_name``
    (``batches/<run>/<part>-<token>.parquet``, whole or not at all) and describe it.

    The token makes each attempt its own file: a batch retried, or run twice by
    a scheduler that lost its result, never overwrites a file a commit lists.
    """
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows, buffer, compression="zstd")
    data = buffer.getvalue()
    path = f"{run_folder(run_id)}/{part:012d}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_bytes_atomic(f"{table_name}/{path}", data)
    return TableFile(
        path=path,
        size=len(data),
        modified_ms=int(time.time() * 1000),
        stats=json.dumps(statistics(rows), separators=(",", ":")),
        rows=rows.num_rows,
        columns=tuple(rows.column_names),
    )


def statistics(rows) -> dict[str, Any]:
    """Delta's per-file statistics of ``rows``: the row count, each column's
    nulls, and the minimum and maximum of its numbers and strings (what readers
    skip files by; other types, NaN-holding floats and long strings record none)."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    low, high, nulls = {}, {}, {}
    for name in rows.column_names:
        column = rows.column(name)
        nulls[name] = column.null_count
        kind = column.type
        if not (pt.is_integer(kind) or pt.is_floating(kind) or pt.is_string(kind)):
            continue
        bounds = pc.min_max(column).as_py()
        lo, hi = bounds["min"], bounds["max"]
        if lo is None or not _bound(lo) or not _bound(hi):
            continue
        low[name], high[name] = lo, hi
    return {"numRecords": rows.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}


def _bound(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= _LONGEST_BOUND
    return True
