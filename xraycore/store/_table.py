"""A Parquet dataset of a store (metadata, predictions) as a directory of parts.

One part file per committed batch, named by :func:`xraycore.store.schema.part_name`;
a compaction merges the parts into one file and deletes exactly the parts it
merged, so a part committed meanwhile (a batch still running, another process)
is kept, never dropped unread. Readers take the latest row per key.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
from dataclasses import dataclass
from typing import Any

from xraycore.store import schema
from xraycore.store.storage import Storage

__all__ = ["PartsTable", "latest_rows"]

_READ_ATTEMPTS = 5
# Parts are read from Python file objects with Arrow's thread pool off: parts are
# small, and a pool used that way can abort the interpreter at exit ("terminate
# called without an active exception", seen once in CI; apache/arrow#50482).


def latest_rows(table, key: tuple[str, ...], time_column: str):
    """The latest row of each ``key`` in ``table``, the store's rule for every dataset.

    Parameters
    ----------
    table : pyarrow.Table
        Rows of one dataset, from any number of parts.
    key : tuple of str
        The columns that name a row (:data:`~xraycore.store.schema.METADATA_KEY`).
    time_column : str
        The row with the greatest value here wins; of equal times, the first read.

    Returns
    -------
    latest : pyarrow.Table
        One row per key, sorted by ``key``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    order = pc.sort_indices(table, [*((k, "ascending") for k in key), (time_column, "descending")])
    table = table.take(order)
    keys = list(zip(*(table.column(k).to_pylist() for k in key), strict=True))
    keep = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    return table.take(pa.array(keep, pa.int64()))


@dataclass(frozen=True)
class PartsTable:
    """The dataset ``name`` under ``storage``; rows are unique per ``key``, the
    latest by ``time_column`` winning."""

    storage: Storage
    name: str
    key: tuple[str, ...]
    time_column: str

    def write_part(self, rows: list[dict[str, Any]], part: str, *, arrow_schema=None) -> None:
        """Commit ``rows`` as the part ``part`` (atomic publish)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        if arrow_schema is None:
            # from_pylist infers columns from the first row: give every row all keys.
            columns = list(dict.fromkeys(k for r in rows for k in r))
            table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])
        else:
            table = pa.Table.from_pylist(rows, schema=arrow_schema)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.storage.write_bytes_atomic(
            posixpath.join(self.name, schema.part_name(part)), buf.getvalue()
        )

    def files(self) -> list[str]:
        """Every file of the dataset (relative to the store), parts or not."""
        if not self.storage.exists(self.name):
            return []
        return sorted(posixpath.join(self.name, f) for f in self.storage.ls(self.name))

    def parts(self) -> list[str]:
        """The committed part files (relative to the store), sorted."""
        return [f for f in self.files() if schema.is_part(f)]

    def read_part(self, path: str):
        """One part file (relative to the store) as a pyarrow Table, every row of it.

        Raises FileNotFoundError when it is gone (compacted away since a listing).
        """
        import pyarrow.parquet as pq

        data = io.BytesIO(self.storage.read_bytes(path))
        return pq.read_table(data, use_threads=False)

    def latest(self, table):
        """The latest row per key of ``table`` (rows of this dataset), see
        :func:`latest_rows`."""
        return latest_rows(table, self.key, self.time_column)

    def _read_parts(self):
        """(latest row per key as a Table or None, the part paths it was read from)."""
        import pyarrow as pa

        for _ in range(_READ_ATTEMPTS):
            paths, tables = self.parts(), []
            try:
                for path in paths:
                    tables.append(self.read_part(path))
                break
            except FileNotFoundError:
                # Compacted away since the listing: its rows are now in a file the
                # listing did not see, so list again rather than skip it.
                continue
        else:
            raise RuntimeError(
                f"{self.storage.uri(self.name)} kept changing while being read "
                f"({_READ_ATTEMPTS} attempts): another process is compacting it; try again"
            )
        if not tables:
            return None, paths
        return self.latest(pa.concat_tables(tables, promote_options="default")), paths

    def read(self):
        """All rows, the latest per key, as a pyarrow Table (or None)."""
        return self._read_parts()[0]

    def compacted_rows(self) -> int | None:
        """The rows of the dataset when it is one compacted part already (nothing
        to merge), else None."""
        import pyarrow.parquet as pq

        parts = self.parts()
        if len(parts) != 1 or not schema.is_compacted_part(parts[0]):
            return None
        return pq.read_metadata(io.BytesIO(self.storage.read_bytes(parts[0]))).num_rows

    def compact(self, run_id: str, transform=None) -> int:
        """Merge the parts into one file (``transform`` applied to the table
        first), then delete exactly the parts that were merged; returns the rows."""
        import pyarrow.parquet as pq

        table, merged = self._read_parts()
        if table is None:
            return 0
        if transform is not None:
            table = transform(table)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        name = posixpath.join(self.name, schema.compacted_part_name(run_id))
        self.storage.write_bytes_atomic(name, buf.getvalue())
        for path in merged:
            if path != name:
                # Another compaction may have merged and removed it already.
                with contextlib.suppress(FileNotFoundError):
                    self.storage.remove(path)
        return table.num_rows
