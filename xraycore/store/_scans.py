"""The :class:`ScanStore`: a store of processed scans under one URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from xraycore._validate import check_int
from xraycore.store import columns, schema
from xraycore.store._codec import ShardDecoder
from xraycore.store._delta import (
    HISTORY_REASON,
    HISTORY_START,
    VersionedTable,
    VersionRemovedError,
    commit_info,
    latest_rows,
)
from xraycore.store._files import TableFile, write_table_file
from xraycore.store._layout import (
    array_rows,
    create_arrays,
    group_attributes,
    open_group,
    shard_key,
    stored_arrays,
)
from xraycore.store._select import select_rows
from xraycore.store._writer import ShardWriter
from xraycore.store.packing import ArraySpec
from xraycore.store.storage import Storage

__all__ = ["ScanStore", "StoreConflictError", "VersionRemovedError"]


class StoreConflictError(ValueError):
    """The store was written with another pipeline spec or batch size."""


class ScanStore:
    """A store of processed scans under one URL (local path or ``s3://``).

    Pixels are the Zarr arrays of :data:`~xraycore.store.schema.IMAGES`, one row per
    scan; what each row is lives in the metadata table
    (:data:`~xraycore.store.schema.METADATA`), predictions in their own table.
    """

    def __init__(self, storage: Storage, version: int | None = None):
        if version is not None:
            check_int(version, "version")
        self.storage = storage
        self._version = version
        self._readers: dict[str, Any] = {}
        self.metadata = VersionedTable(
            storage,
            schema.METADATA,
            columns.METADATA_KEY,
            columns.METADATA_TIME,
            nullable_key=("frame",),
            version=version,
        )
        self.predictions = VersionedTable(
            storage,
            schema.PREDICTIONS,
            columns.PREDICTION_KEY,
            columns.PREDICTION_TIME,
            nullable_key=("finding",),
        )

    @classmethod
    def open(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> ScanStore:
        """The store at ``url``; with ``version``, as it was at that version
        (read-only: its metadata rows then, the pixels they point at, the
        predictions committed by then)."""
        store = cls(Storage.from_url(url, storage_options), version)
        if version is not None:
            store.metadata.open()  # refuses a version that is not kept, saying why
        return store

    @property
    def version(self) -> int | None:
        """The version this store reads: the one asked for, else the latest
        (None before the first commit)."""
        if self._version is not None:
            return self._version
        return self.metadata.current_version()

    @property
    def read_only(self) -> bool:
        return self._version is not None

    def _writable(self) -> None:
        if self._version is not None:
            raise ValueError(
                f"store {self.storage.url} is opened at version {self._version}, "
                "read-only: open it without version= to write"
            )

    def __getstate__(self) -> dict[str, Any]:  # open Zarr arrays stay behind
        return {"storage": self.storage, "version": self._version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], state.get("version"))

    # -- the Zarr arrays ----------------------------------------------------
    def group(self, mode: str = "r"):
        """The Zarr group of the pixel arrays."""
        return open_group(self.storage, mode)

    def info(self) -> dict[str, Any] | None:
        """The store's recorded attributes, or None when there is no store yet.

        Raises :class:`~xraycore.store.schema.StoreFormatError` for a store of another format.
        """
        attrs = group_attributes(self.storage)
        if attrs is None:
            return None
        schema.check_format(attrs, self.storage.url)
        return attrs

    def info_or_raise(self) -> dict[str, Any]:
        """:meth:`info`, or a ValueError saying the store does not exist yet."""
        info = self.info()
        if info is None:
            raise ValueError(f"store {self.storage.url} is not initialised (no {schema.IMAGES})")
        return info

    @property
    def batch_size(self) -> int:
        """Rows handed to one writer; batches start at multiples of it."""
        return int(self.info_or_raise()["batch_size"])

    @property
    def shard_size(self) -> int:
        """Images per Zarr shard (divides :attr:`batch_size`)."""
        return int(self.info_or_raise()["shard_size"])

    def initialise(self, spec, *, batch_size: int | None = None, overwrite: bool = False) -> int:
        """Create the group and arrays, or check that an existing store matches;
        returns the store's batch size.

        ``batch_size`` rows go to one writer; Zarr shards hold the largest
        divisor of it up to :data:`xraycore.store.schema.SHARD_SIZE` images. None: the
        existing store's own, or :data:`xraycore.store.schema.BATCH_SIZE` for a new one.
        """
        if batch_size is not None:
            check_int(batch_size, "batch_size", minimum=1)
        self._writable()
        if overwrite and self.storage.exists(schema.IMAGES, "zarr.json"):
            self._discard()
        info = self.info()
        if batch_size is None:
            batch_size = int(info["batch_size"]) if info is not None else schema.BATCH_SIZE
        if info is not None:
            if info.get("pipeline_hash") != spec.hash:
                raise StoreConflictError(
                    f"store {self.storage.url} was written with pipeline "
                    f"{info.get('pipeline_hash')}, this run's pipeline is {spec.hash}: "
                    "its outputs would be stale or mixed. "
                    "Use another --out, or pass --overwrite to discard the store and start again."
                )
            if info.get("batch_size") != batch_size:
                raise StoreConflictError(
                    f"store {self.storage.url} hands out rows in batches of "
                    f"{info.get('batch_size')} images, not {batch_size}: "
                    f"rerun with --batch-size {info.get('batch_size')}, or without it"
                )
            return batch_size
        self.storage.makedirs()
        create_arrays(self.storage, spec, batch_size)
        return batch_size

    def arrays(self) -> dict[str, ArraySpec]:
        """Name -> :class:`~xraycore.store.packing.ArraySpec` of every stored array."""
        self.info_or_raise()
        return {name: spec for name, (_, spec) in stored_arrays(self.group("r")).items()}

    def zarr_array(self, name: str):
        """The raw ``zarr.Array`` of ``name`` (stored values: unpack packed maps
        with ``scale_factor``/``add_offset`` from its attributes)."""
        self.info_or_raise()
        return self.group("r")[name]

    def capacity(self) -> int:
        """Rows the arrays hold (written or not)."""
        return array_rows(self.storage, "preprocessed")

    def ensure_capacity(self, rows: int) -> None:
        """Grow every array to hold ``rows`` rows (metadata-only for Zarr)."""
        names = self.info_or_raise()["arrays"]
        if all(array_rows(self.storage, name) >= rows for name in names):
            return  # nothing to grow: Zarr is not even imported
        group = self.group("a")
        for name in names:
            arr = group[name]
            if arr.shape[0] < rows:
                arr.resize((rows, *arr.shape[1:]))
        self._readers.clear()

    def writer(self, start: int, rows: int) -> ShardWriter:
        """A writer for the ``rows`` rows from ``start`` (one batch)."""
        return ShardWriter(self.storage, start, rows)

    def _reader(self, name: str, stop: int):
        cached = self._readers.get(name)
        if cached is None or cached[0].shape[0] < stop:
            self.info_or_raise()
            arr = self.group("r")[name]
            spec = ArraySpec.from_attributes(name, str(arr.dtype), arr.shape[1:], dict(arr.attrs))
            cached = self._readers[name] = (arr, spec)
        return cached

    def read(self, name: str, rows, *, decode: bool = True) -> np.ndarray:
        """Rows of one array (``rows`` an int, slice or list of ints), packed
        maps decoded to their physical float32 values unless ``decode=False``."""
        if isinstance(rows, list):
            stop = max(rows, default=-1) + 1
        elif isinstance(rows, slice):
            stop = rows.stop or 0
        else:
            stop = int(rows) + 1
        arr, spec = self._reader(name, stop)
        stored = arr.oindex[rows] if isinstance(rows, list) else arr[rows]
        return spec.unpack(stored) if decode else stored

    def shard_decoder(self, name: str) -> ShardDecoder | None:
        """The decoder of ``name``'s shard objects (None for a layout it does not
        know: read through :meth:`read` then)."""
        arr, _ = self._reader(name, 0)
        return ShardDecoder.for_array(arr)

    def shard_key(self, name: str, shard_index: int) -> str:
        """The object of shard ``shard_index`` of ``name``, relative to the store
        (:func:`~xraycore.store._layout.shard_key`)."""
        arr, _ = self._reader(name, 0)
        return shard_key(name, arr, shard_index)

    def _discard(self) -> None:
        """``--overwrite``: the pixels go, and with them every version that
        read them; the tables keep their log, so an old version is refused
        saying what removed it."""
        from datetime import UTC, datetime

        self.storage.remove(schema.IMAGES)
        for name in schema.LEGACY_TABLES:
            if self.storage.exists(name):
                self.storage.remove(name)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        for table, empty in (
            (self.metadata, columns.arrow_schema([])),
            (self.predictions, columns.prediction_schema()),
        ):
            if not table.exists():
                continue
            table.replace(empty.empty_table(), commit_info("overwrite", "overwrite"))
            start = table.current_version()
            table.set_properties(
                {HISTORY_START: str(start), HISTORY_REASON: f"--overwrite at {stamp}"},
                commit_info("overwrite", "overwrite"),
            )

    # -- the metadata and predictions tables --------------------------------
    def fence(self, run_id: str) -> None:
        """Make ``run_id`` (the lease holder) the only run whose batches may
        commit rows (:mod:`xraycore.store._delta`): a batch of a run that lost
        the lease raises :class:`~xraycore.store._delta.FencedCommitError`."""
        self._writable()
        self.metadata.open_run(run_id)  # before any batch of it writes a file
        self.metadata.fence(run_id, columns.arrow_schema([]), commit_info("fence", run_id))

    def write_rows(self, rows: list[dict[str, Any]], *, run_id: str, part: int) -> TableFile:
        """Write metadata rows as a file of the table for the run's committer to
        commit (:meth:`commit_row_files`): what a batch task does instead of
        committing. ``part`` names the batch (its first row)."""
        import pyarrow as pa

        self._writable()
        table = pa.Table.from_pylist(rows, schema=columns.arrow_schema(rows))
        table = latest_rows(table, columns.METADATA_KEY, columns.METADATA_TIME)
        # A label column with no value in this batch has no type: left out, a
        # Delta reader reads it as null for these rows.
        typed = [f.name for f in table.schema if not pa.types.is_null(f.type)]
        table = table.select(typed)
        return write_table_file(self.storage, schema.METADATA, table, run_id=run_id, part=part)

    def commit_row_files(
        self,
        files: list[TableFile],
        *,
        run_id: str,
        group: int,
        fence: str | None = None,
        replacing: list[str] | tuple[str, ...] = (),
        pipeline_hash: str | None = None,
    ) -> bool:
        """Commit the metadata files of a group of batches in one version (kind
        ``batch``, ``group`` its number in the run); False when the run committed
        that group already. ``replacing``: the sources among the files' rows that
        already have rows in the table (they are replaced: a merge on them)."""
        self._writable()
        rows = sum(f.rows for f in files)
        info = commit_info("batch", run_id, pipeline_hash=pipeline_hash, rows=rows, detail=group)
        return self.metadata.commit_files(
            files,
            info,
            transaction=(f"xray-{run_id}", group),
            fence=fence,
            replacing=("source", list(replacing)) if replacing else None,
        )

    def commit_rows(
        self,
        rows: list[dict[str, Any]],
        *,
        run_id: str,
        kind: str = "batch",
        fence: str | None = None,
        pipeline_hash: str | None = None,
    ) -> dict[str, Any]:
        """Commit metadata rows (a new version): each replaces its key's row
        unless that row is newer. With ``fence``, only while that run is the
        store's writer (:meth:`fence`). Returns delta-rs's merge metrics."""
        import pyarrow as pa

        self._writable()
        if not rows:
            return {}
        table = pa.Table.from_pylist(rows, schema=columns.arrow_schema(rows))
        info = commit_info(kind, run_id, pipeline_hash=pipeline_hash, rows=len(rows))
        return self.metadata.merge(table, info, fence=fence)

    def read_metadata(self, rows: list[int] | None = None, columns: list[str] | None = None):
        """All metadata rows of this version, sorted by image_id (None: no rows);
        a fixed column the table lacks (written before it) is read as null. With
        ``rows``, the rows whose ``row`` is one of them only, and with ``columns``
        those columns only (what a few-row reader needs, without decoding a
        large store's whole table)."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        from xraycore.store.columns import arrow_schema

        wanted = None if rows is None else ds.field("row").isin([int(r) for r in rows])
        if columns is not None:
            columns = list(dict.fromkeys(["image_id", *columns]))
        table = self.metadata.read(wanted, columns=columns)
        if table is None or table.num_rows == 0:
            return None
        for field in arrow_schema([]):
            if field.name not in table.column_names and (columns is None or field.name in columns):
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        return table.sort_by([("image_id", "ascending")])

    def check_columns(self, table) -> None:
        """Refuse new rows for a metadata ``table`` (this store's) whose fixed
        columns are not of their type (:func:`~xraycore.store.columns.metadata_conflicts`),
        saying how to conform it."""
        found = columns.metadata_conflicts(table.schema) if table is not None else []
        if found:
            raise ValueError(
                f"store {self.storage.url}: metadata column {'; '.join(found)} was written "
                f"before the header columns; conform it, no pixel reprocessed: "
                f"`xray upgrade {self.storage.url}`"
            )

    def select(
        self,
        *,
        split: str | None = None,
        where: dict[str, Any] | None = None,
        target: str | None = None,
        status: str | None = "ok",
        empty_ok: bool = False,
    ):
        """The metadata rows of a selection (the ok rows by default), in row order;
        see :func:`xraycore.store.select_rows`."""
        return select_rows(
            self.read_metadata(),
            url=self.storage.url,
            split=split,
            where=where,
            target=target,
            status=status,
            empty_ok=empty_ok,
        )

    def finish_run(self, run_id: str, *, pipeline_hash: str | None = None) -> int:
        """The end of a run: its batches' small files compacted into few (a
        version, when there were several); returns the store's rows. A run
        with nothing to do commits nothing."""
        self._writable()
        self.metadata.optimize(commit_info("run-end", run_id, pipeline_hash=pipeline_hash))
        return self.metadata.rows()

    def replace_rows(self, transform, *, run_id: str, kind: str = "split") -> int:
        """Commit ``transform(rows)`` as every metadata row (a split: a new
        version; the rows and pixels of older ones are kept); returns the rows."""
        self._writable()
        table = self.read_metadata()
        if table is None:
            return 0
        table = transform(table.sort_by([("image_id", "ascending")]))
        self.metadata.replace(table, commit_info(kind, run_id, rows=table.num_rows))
        return table.num_rows

    def commit_predictions(self, records: list[dict[str, Any]], *, run_id: str) -> dict:
        """Commit predictions (a version of the predictions table)."""
        import pyarrow as pa

        self._writable()
        if not records:
            return {}
        table = pa.Table.from_pylist(records, schema=columns.prediction_schema())
        info = commit_info("classification", run_id, rows=len(records))
        return self.predictions.merge(table, info)

    def open_classification(self, run_id: str) -> None:
        """Record that ``run_id``'s scoring tasks may write prediction files."""
        self._writable()
        self.predictions.create(columns.prediction_schema(), commit_info("create", run_id))
        self.predictions.open_run(run_id)

    def write_predictions(self, records: list[dict[str, Any]], *, run_id: str, part: int):
        """Write predictions as a file of their table for the run's committer
        (:meth:`commit_prediction_files`)."""
        import pyarrow as pa

        self._writable()
        table = pa.Table.from_pylist(records, schema=columns.prediction_schema())
        table = latest_rows(table, columns.PREDICTION_KEY, columns.PREDICTION_TIME)
        return write_table_file(self.storage, schema.PREDICTIONS, table, run_id=run_id, part=part)

    def commit_prediction_files(
        self,
        files: list[TableFile],
        *,
        run_id: str,
        group: int,
        replacing: list[str] | tuple[str, ...] = (),
    ) -> bool:
        """Commit prediction files in one version; ``replacing``: the image ids
        among them that may have predictions already (merged on them)."""
        self._writable()
        info = commit_info("classification", run_id, rows=sum(f.rows for f in files), detail=group)
        return self.predictions.commit_files(
            files,
            info,
            transaction=(f"xray-{run_id}", group),
            replacing=("image_id", list(replacing)) if replacing else None,
        )

    def read_predictions(self):
        """Predictions, one per (image, model) (re-classifying replaces), or
        None; at a version, those committed by then."""
        table = self._predictions_table()
        if table is None:
            return None
        rows = table.to_pyarrow_table()
        return None if rows.num_rows == 0 else rows.sort_by([("row", "ascending")])

    def _predictions_table(self):
        """The predictions table at the latest of its versions committed by the
        time of this store's version (None: none was)."""
        if self._version is None:
            return self.predictions.open()
        when = self.metadata.commit_time(self._version)
        committed = [
            e["version"]
            for e in self.predictions.history()
            if datetime.fromisoformat(e["timestamp"]) <= when
        ]
        if not committed:
            return None
        return self.predictions.open(max(committed))

    def finish_classification(self, run_id: str) -> int:
        """Compact a classification run's predictions and remove the files of its
        scoring tasks that no commit lists; returns their rows."""
        self._writable()
        self.predictions.optimize(commit_info("classification-end", run_id))
        self.predictions.remove_uncommitted([run_id])
        return self.predictions.rows()

    def history(self) -> list[dict[str, Any]]:
        """Every kept commit of both tables, newest first (``xray log``)."""
        out = [{**e, "table": "metadata"} for e in self.metadata.history()]
        out += [{**e, "table": "predictions"} for e in self.predictions.history()]
        return sorted(out, key=lambda e: e["timestamp"], reverse=True)

    # -- what interrupted writers leave -------------------------------------
    def temporary_files(self, *, older_than_s: float = schema.TEMPORARY_GRACE_S) -> list[str]:
        """The temporary files of the store (relative paths) not modified for
        ``older_than_s`` seconds: what a writer killed between writing and
        renaming left (:func:`schema.is_temporary`). Younger ones may be a live
        writer's. An object store has none: its writes are whole PUTs.
        """
        import time

        if not self.storage.is_local or not self.storage.exists():
            return []
        now = time.time()
        return sorted(
            p
            for p, info in self.storage.find().items()
            if schema.is_temporary(p) and now - float(info.get("mtime") or 0) >= older_than_s
        )

    def remove_leftovers(self, *, older_than_s: float = schema.TEMPORARY_GRACE_S) -> list[str]:
        """Delete what killed writers left and return the paths: the temporary
        files of :meth:`temporary_files` (shards, the lease, pictures), and the
        table files no kept version reads (written, never committed).

        Only for the holder of the store's lease (:mod:`xraycore.store.lease`) once its
        own batches are done: a leftover is then nobody's work in progress. The
        metadata table's go whatever their age (only the lease holder commits
        there); other files younger than ``older_than_s`` may be a classification
        run's, which takes no lease, and stay.
        """
        removed = self.temporary_files(older_than_s=older_than_s)
        removed += self.metadata.untracked_files(older_than_s=0.0)
        removed += self.predictions.untracked_files(older_than_s=older_than_s)
        for path in removed:
            self.storage.remove(path)
        return removed + self.metadata.remove_uncommitted()

    def end_run(self, run_id: str) -> list[str]:
        """What a run's end removes, at a cost that follows the runs since the last
        clean end and never the history: temporary files, and the files that this
        run's batches, and those of runs killed before it, wrote and no commit
        lists (:meth:`~xraycore.store._delta.VersionedTable.remove_uncommitted`;
        for the lease holder), and this run's uncommitted prediction files."""
        removed = self.temporary_files()
        for path in removed:
            self.storage.remove(path)
        removed += self.metadata.remove_uncommitted()
        return removed + self.predictions.remove_uncommitted([run_id])
