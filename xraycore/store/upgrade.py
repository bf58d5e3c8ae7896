"""``xray upgrade``: a format-3 store's tables moved into Delta Lake, no pixel touched.

Format 3 kept the metadata and predictions as directories of Parquet parts
(``part-*.parquet``: one per committed batch, one per compaction), read as the
latest row per key. The upgrade reads them once, under the store's lease,
commits what they held as version 0 of each Delta table (commit kind
``upgrade``), then records format 4 on the Zarr group and removes the parts.
An upgrade that is interrupted is run again: until the format is bumped the
store is still format 3 and its parts are still there.

A format-4 store whose metadata holds a fixed column in another type (written
before the DICOM header columns: MIMIC-CXR's ``study_id`` as integers, an age
as ``058Y``) is conformed the same way: its rows committed again in the
columns' types (:func:`~xraycore.store.columns.conform_metadata`), one version
of kind ``upgrade``; no pixel is touched.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from typing import Any

from xraycore.store import columns, schema
from xraycore.store._delta import commit_info, latest_rows
from xraycore.store._layout import group_attributes
from xraycore.store.storage import Storage

__all__ = ["upgrade_store"]


def _legacy_rows(storage: Storage, name: str, key: tuple[str, ...], time_column: str):
    """The latest row per key of a format-3 parts directory (None: no rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not storage.exists(name):
        return None
    parts = sorted(
        posixpath.join(name, f)
        for f in storage.ls(name)
        if f.startswith("part-") and f.endswith(".parquet")
    )
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(p)), use_threads=False) for p in parts]
    if not tables:
        return None
    return latest_rows(pa.concat_tables(tables, promote_options="default"), key, time_column)


def _with_columns(table, arrow_schema):
    """``table`` with every column of ``arrow_schema`` (missing ones null), in its types."""
    import pyarrow as pa

    for field in arrow_schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.cast(
        pa.schema(
            [
                arrow_schema.field(n) if n in arrow_schema.names else table.schema.field(n)
                for n in table.column_names
            ]
        )
    )


def _bump_format(storage: Storage) -> None:
    """Record the new format in the Zarr group's own metadata document."""
    path = posixpath.join(schema.IMAGES, "zarr.json")
    document = json.loads(storage.read_bytes(path))
    document.setdefault("attributes", {})["format"] = schema.FORMAT
    storage.write_bytes_atomic(path, json.dumps(document, indent=2).encode())


def _conform(storage: Storage, url: str) -> dict[str, Any]:
    """A format-4 store's metadata in its columns' types (see the module)."""
    from xraycore.store._scans import ScanStore
    from xraycore.store.lease import StoreLease

    store = ScanStore(storage)
    table = store.metadata.read()
    found = columns.metadata_conflicts(table.schema) if table is not None else []
    if not found:
        return {"upgraded": False, "rows": None, "predictions": None, "version": None}
    run_id = f"upgrade-{uuid.uuid4().hex[:8]}"
    with StoreLease.acquire(storage, run_id, description="xray upgrade"):
        rows = store.replace_rows(columns.conform_metadata, run_id=run_id, kind="upgrade")
    return {
        "upgraded": True,
        "conformed": found,
        "rows": rows,
        "predictions": 0,
        "version": store.metadata.current_version(),
    }


def upgrade_store(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Move the store at ``url`` to :data:`~xraycore.store.schema.FORMAT`.

    Parameters
    ----------
    url : str
    storage_options : dict, optional

    Returns
    -------
    summary : dict
        ``from_format``, ``to_format``, ``rows`` and ``predictions`` committed,
        ``version`` (of the metadata table); ``upgraded`` False for a store in
        the current format already (nothing is written then).
    """
    from xraycore.store._scans import ScanStore
    from xraycore.store.lease import StoreLease

    storage = Storage.from_url(url, storage_options)
    attrs = group_attributes(storage)
    if attrs is None:
        raise ValueError(f"store {url} is not initialised (no {schema.IMAGES})")
    found = attrs.get("format", 1)
    summary = {"store": url, "from_format": found, "to_format": schema.FORMAT}
    if found == schema.FORMAT:
        return {**summary, **_conform(storage, url)}
    if found not in schema.UPGRADABLE:
        schema.check_format(attrs, url)  # refuses it, saying how to rebuild it
    run_id = f"upgrade-{uuid.uuid4().hex[:8]}"
    with StoreLease.acquire(storage, run_id, description="xray upgrade"):
        store = ScanStore(storage)
        counts = {}
        for name, table, arrow_schema, key, time_column in (
            (
                schema.LEGACY_TABLES[0],
                store.metadata,
                None,
                columns.METADATA_KEY,
                columns.METADATA_TIME,
            ),
            (
                schema.LEGACY_TABLES[1],
                store.predictions,
                columns.prediction_schema(),
                schema.LEGACY_PREDICTION_KEY,
                columns.PREDICTION_TIME,
            ),
        ):
            rows = _legacy_rows(storage, name, key, time_column)
            if rows is None:
                counts[name] = 0
                continue
            if arrow_schema is None:
                rows = columns.conform_metadata(rows)  # its label columns as they are
            else:
                rows = _with_columns(rows, arrow_schema)
            info = commit_info("upgrade", run_id, rows=rows.num_rows, detail=f"format {found}")
            table.replace(rows, info)
            counts[name] = rows.num_rows
        _bump_format(storage)
        for name in schema.LEGACY_TABLES:
            if storage.exists(name):
                storage.remove(name)
        version = store.metadata.current_version()
    return {
        **summary,
        "upgraded": True,
        "rows": counts[schema.LEGACY_TABLES[0]],
        "predictions": counts[schema.LEGACY_TABLES[1]],
        "version": version,
    }
