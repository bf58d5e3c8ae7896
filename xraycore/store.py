"""The store: ``STORE/images.zarr`` (Zarr v3) + ``STORE/metadata.parquet``.

What is stored, and how, is :mod:`xraycore.schema`; this module reads and
writes it.

- One array per output, one image per chunk, ``shard_size`` images per shard.
  Rows are handed out in batches of ``batch_size`` (a multiple of
  ``shard_size``); a batch is written by one :class:`ShardWriter` that writes
  each of its shards whole, once, so no shard ever has two writers.
- ``metadata.parquet`` is a Parquet dataset directory: one part file per
  committed batch, compacted to one file at the end of a run. A part is written
  only after the pixels it describes, so a row that says ``ok`` has its pixels
  durably in the store.
- The group's attributes record the store format, the pipeline spec and its
  hash; a store refuses a different spec unless asked to overwrite, and a store
  of another format always.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import schema
from .pipeline import PipelineSpec
from .schema import ArraySpec, StoreFormatError
from .storage import Storage

__all__ = [
    "IMAGES",
    "METADATA",
    "PREDICTIONS",
    "ScanStore",
    "ShardWriter",
    "StoreConflictError",
    "StoreFormatError",
]

IMAGES = "images.zarr"
METADATA = "metadata.parquet"
PREDICTIONS = "predictions.parquet"


class StoreConflictError(ValueError):
    """The store was written with another pipeline spec or batch size."""


def _shard_rows(batch_size: int) -> int:
    """The largest divisor of ``batch_size`` not above :data:`schema.SHARD_SIZE`."""
    return max(d for d in range(1, min(batch_size, schema.SHARD_SIZE) + 1) if batch_size % d == 0)


class ScanStore:
    """A store of processed scans under one URL (local path or ``s3://``)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._readers: dict[str, Any] = {}

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> ScanStore:
        return cls(Storage.from_url(url, storage_options))

    # -- Zarr ---------------------------------------------------------------
    def _group(self, mode: str = "r"):
        import zarr

        return zarr.open_group(self.storage.zarr_store(IMAGES), mode=mode, zarr_format=3)

    def info(self) -> dict[str, Any] | None:
        """The store's recorded attributes, or None when there is no store yet.

        Raises :class:`StoreFormatError` for a store of another format.
        """
        if not self.storage.exists(IMAGES, "zarr.json"):
            return None
        attrs = dict(self._group("r").attrs)
        schema.check_format(attrs, self.storage.url)
        return attrs

    def _info(self) -> dict[str, Any]:
        info = self.info()
        if info is None:
            raise ValueError(f"store {self.storage.url} is not initialised (no {IMAGES})")
        return info

    @property
    def batch_size(self) -> int:
        """Rows handed to one writer; batches start at multiples of it."""
        return int(self._info()["batch_size"])

    @property
    def shard_size(self) -> int:
        """Images per Zarr shard (divides :attr:`batch_size`)."""
        return int(self._info()["shard_size"])

    def initialise(
        self,
        spec: PipelineSpec,
        *,
        batch_size: int,
        overwrite: bool = False,
    ) -> None:
        """Create the group and arrays, or check that an existing store matches.

        ``batch_size`` rows go to one writer; Zarr shards hold the largest
        divisor of it up to :data:`xraycore.schema.SHARD_SIZE` images.
        """
        import zarr
        from zarr.codecs import BloscCodec

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if overwrite and self.storage.exists(IMAGES, "zarr.json"):
            self.storage.remove(IMAGES)
            self.storage.remove(METADATA)
            self.storage.remove(PREDICTIONS)
        info = self.info()
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
                    f"rerun with --batch-size {info.get('batch_size')}"
                )
            return
        self.storage.makedirs()
        group = zarr.open_group(self.storage.zarr_store(IMAGES), mode="w", zarr_format=3)
        shard = _shard_rows(batch_size)
        arrays = schema.array_specs(spec)
        for a in arrays:
            group.create_array(
                a.name,
                shape=(0, *a.shape),
                dtype=a.dtype,
                chunks=(1, *a.shape) if len(a.shape) == 2 else (shard, *a.shape),
                shards=(shard, *a.shape) if len(a.shape) == 2 else None,
                compressors=BloscCodec(**schema.COMPRESSORS[a.name]),
                fill_value=a.fill_value,
                attributes=a.attributes(),
                dimension_names=("row", "y", "x") if len(a.shape) == 2 else ("row", "bin"),
            )
        group.attrs.update(
            {
                "format": schema.FORMAT,
                "pipeline_hash": spec.hash,
                "pipeline": spec.to_dict(),
                "batch_size": batch_size,
                "shard_size": shard,
                "size": spec.size,
                "arrays": [a.name for a in arrays],
            }
        )

    def arrays(self) -> dict[str, ArraySpec]:
        """Name -> :class:`~xraycore.schema.ArraySpec` of every stored array."""
        group = self._group("r")
        out = {}
        for name in self._info()["arrays"]:
            arr = group[name]
            out[name] = ArraySpec.from_attributes(
                name, str(arr.dtype), arr.shape[1:], dict(arr.attrs)
            )
        return out

    def zarr_array(self, name: str):
        """The raw ``zarr.Array`` of ``name`` (stored values: unpack packed maps
        with ``scale_factor``/``add_offset`` from its attributes)."""
        self._info()
        return self._group("r")[name]

    def capacity(self) -> int:
        return int(self._group("r")["preprocessed"].shape[0])

    def ensure_capacity(self, rows: int) -> None:
        """Grow every array to hold ``rows`` rows (metadata-only for Zarr)."""
        group = self._group("a")
        for name in group.attrs["arrays"]:
            arr = group[name]
            if arr.shape[0] < rows:
                arr.resize((rows, *arr.shape[1:]))
        self._readers.clear()

    def writer(self, start: int, rows: int) -> ShardWriter:
        """A writer for the ``rows`` rows from ``start`` (one batch)."""
        return ShardWriter(self, start, rows)

    def _reader(self, name: str, stop: int):
        cached = self._readers.get(name)
        if cached is None or cached[0].shape[0] < stop:
            self._info()
            arr = self._group("r")[name]
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

    # -- Parquet ------------------------------------------------------------
    # Each Parquet dataset (metadata, predictions) is a directory of part files:
    # one per committed batch, compacted to one file at the end of a run.
    def write_part(
        self, dataset: str, rows: list[dict[str, Any]], part: str, *, arrow_schema=None
    ) -> None:
        """Commit rows as one part file of ``dataset`` (atomic publish)."""
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
            posixpath.join(dataset, f"part-{part}.parquet"), buf.getvalue()
        )

    def _part_paths(self, dataset: str) -> list[str]:
        if not self.storage.exists(dataset):
            return []
        return sorted(
            p
            for p in self.storage.fs.ls(self.storage.path(dataset), detail=False)
            if p.endswith(".parquet") and posixpath.basename(p).startswith("part-")
        )

    def _read_parts(self, dataset: str, *, key: tuple[str, ...], time_column: str):
        """(latest row per ``key`` as a Table or None, the part paths it was read from)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for _ in range(_READ_ATTEMPTS):
            paths, tables = self._part_paths(dataset), []
            try:
                for path in paths:
                    tables.append(pq.read_table(io.BytesIO(self.storage.read_bytes(path))))
                break
            except FileNotFoundError:
                # Compacted away since the listing: its rows are now in a file the
                # listing did not see, so list again rather than skip it.
                continue
        else:
            raise RuntimeError(
                f"{self.storage.uri(dataset)} kept changing while being read "
                f"({_READ_ATTEMPTS} attempts): another process is compacting it; try again"
            )
        if not tables:
            return None, paths
        table = pa.concat_tables(tables, promote_options="default")
        order = pc.sort_indices(
            table, [*((k, "ascending") for k in key), (time_column, "descending")]
        )
        table = table.take(order)
        keys = list(zip(*(table.column(k).to_pylist() for k in key), strict=True))
        keep = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
        return table.take(pa.array(keep, pa.int64())), paths

    def read_dataset(self, dataset: str, *, key: tuple[str, ...], time_column: str):
        """All rows of ``dataset``, the latest per ``key``, as a pyarrow Table (or None)."""
        return self._read_parts(dataset, key=key, time_column=time_column)[0]

    def _compact(self, dataset: str, key, time_column, run_id: str, transform=None) -> int:
        """Merge the parts of ``dataset`` into one file, then delete exactly the
        parts that were merged: a part committed meanwhile (by a batch still
        running, or another process) is kept, never dropped unread."""
        import pyarrow.parquet as pq

        table, merged = self._read_parts(dataset, key=key, time_column=time_column)
        if table is None:
            return 0
        if transform is not None:
            table = transform(table)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        name = f"part-compacted-{run_id}.parquet"
        self.storage.write_bytes_atomic(posixpath.join(dataset, name), buf.getvalue())
        for path in merged:
            if posixpath.basename(path) != name:
                # Another compaction may have merged and removed it already.
                with contextlib.suppress(FileNotFoundError):
                    self.storage.fs.rm(path)
        return table.num_rows

    def remove_temporary_files(self) -> list[str]:
        """Delete what interrupted part writes left (``part-*.tmp-*`` files of a
        killed process or a full disk) in the metadata and predictions datasets.

        Only for the holder of the store's lease (:mod:`xraycore.lease`) once its
        own batches are done: a temporary file is then nobody's work in progress.
        Returns the paths removed.
        """
        removed = []
        for dataset in (METADATA, PREDICTIONS):
            if not self.storage.exists(dataset):
                continue
            for path in self.storage.fs.ls(self.storage.path(dataset), detail=False):
                if ".tmp-" in posixpath.basename(path):
                    self.storage.fs.rm(path)
                    removed.append(path)
        return removed

    def write_metadata_part(self, rows: list[dict[str, Any]], part: str) -> None:
        self.write_part(METADATA, rows, part, arrow_schema=schema.arrow_schema(rows))

    def read_metadata(self):
        """All metadata rows, one per source (the latest), sorted by image_id (or None)."""
        table = self.read_dataset(METADATA, key=_METADATA_KEY, time_column="processed_at")
        return None if table is None else table.sort_by([("image_id", "ascending")])

    def compact_metadata(self, run_id: str, *, transform=None) -> int:
        """Replace the metadata parts by one deduplicated file (``transform``
        applied to the table first, if given); returns its row count."""

        def latest(table):
            table = table.sort_by([("image_id", "ascending")])
            return transform(table) if transform else table

        return self._compact(METADATA, _METADATA_KEY, "processed_at", run_id, latest)

    def read_predictions(self):
        """Predictions, one per (image, model) (re-classifying replaces), or None."""
        table = self.read_dataset(PREDICTIONS, key=_PREDICTION_KEY, time_column="classified_at")
        return None if table is None else table.sort_by([("row", "ascending")])

    def compact_predictions(self, run_id: str) -> int:
        def by_row(table):
            return table.sort_by([("row", "ascending")])

        return self._compact(PREDICTIONS, _PREDICTION_KEY, "classified_at", run_id, by_row)


_METADATA_KEY = ("source",)
_READ_ATTEMPTS = 5
_PREDICTION_KEY = ("image_id", "model_sha256")


class ShardWriter:
    """Writes one batch's rows shard by shard, each shard whole and once.

    Packs each image into a reusable shard buffer as it comes
    (:meth:`put`), and hands a full buffer to a background thread that
    compresses and writes it while the next shard is being computed; two
    buffers alternate, so a writer holds at most two shards of every array.
    Rows of the range that get no image (failed inputs, the tail of the last
    shard) hold each array's fill value, which decodes to zero.

    Use as a context manager, or call :meth:`close`: it waits for every write
    and raises the first error, so metadata is committed only after pixels.
    """

    def __init__(self, store: ScanStore, start: int, rows: int):
        info = store._info()
        self.shard = int(info["shard_size"])
        batch = int(info["batch_size"])
        if start % batch:
            raise ValueError(f"start row {start} is not aligned to batches of {batch}")
        if not 0 <= rows <= batch:
            raise ValueError(f"a writer owns at most {batch} rows, got {rows}")
        self.start, self.rows = start, rows
        import zarr

        # Every chunk of a shard is written, failed rows included: checking each
        # 1 MB chunk against the fill value cost more than compressing it. And a
        # shard's chunks go through the codecs as one batch, not one by one
        # (-15% CPU per write, measured).
        config = {"array.write_empty_chunks": True, "codec_pipeline.batch_size": self.shard}
        with zarr.config.set(config):
            group = store._group("a")
            self.specs = store.arrays()
            self._arrays = {name: group[name] for name in self.specs}
        self._storage = store.storage
        self._encoders = {
            name: enc
            for name, arr in self._arrays.items()
            if (enc := _ShardEncoder.for_array(arr, self.shard)) is not None
        }
        capacity = min(arr.shape[0] for arr in self._arrays.values())
        if start + rows > capacity:
            # Zarr, like NumPy, silently drops writes past the end of an array.
            raise ValueError(
                f"rows {start}..{start + rows - 1} are past the store's {capacity} rows: "
                "call ensure_capacity first"
            )
        self._buffers: list[dict[str, np.ndarray]] = []
        self._pending: list[Future | None] = [None, None]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        self._current: int | None = None  # shard index within the batch
        self._filled: set[int] = set()
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _buffer(self, index: int) -> dict[str, np.ndarray]:
        while len(self._buffers) <= index % 2:
            self._buffers.append(_SHARD_BUFFERS.take(self.shard, self.specs))
        return self._buffers[index % 2]

    def _switch_to(self, shard: int) -> dict[str, np.ndarray]:
        if self._current is not None and shard < self._current:
            raise ValueError(f"rows must come in order: shard {shard} after {self._current}")
        while self._current is None or self._current < shard:
            if self._current is not None:
                self._flush(self._current)
                nxt = self._current + 1
            else:
                nxt = 0
            pending = self._pending[nxt % 2]
            if pending is not None:
                pending.result()  # the buffer is free again once its shard is written
            self._current = nxt
            self._filled = set()
        return self._buffer(shard)

    def put(self, slot: int, outputs: dict[str, np.ndarray]) -> None:
        """Pack the outputs of the image in ``slot`` (row ``start + slot``)."""
        if not 0 <= slot < self.rows:
            raise ValueError(f"slot {slot} outside this writer's {self.rows} rows")
        buf = self._switch_to(slot // self.shard)
        i = slot % self.shard
        for name, spec in self.specs.items():
            spec.pack(outputs[name], buf[name][i])
        self._filled.add(i)

    def _flush(self, shard: int) -> None:
        buf = self._buffer(shard)
        for i in set(range(self.shard)) - self._filled:
            for name, spec in self.specs.items():
                buf[name][i] = spec.fill_value
        self._pending[shard % 2] = self._pool.submit(self._write, shard, buf)

    def _write(self, shard: int, buf: dict[str, np.ndarray]) -> None:
        lo = self.start + shard * self.shard
        for name, arr in self._arrays.items():
            encoder = self._encoders.get(name)
            if encoder is None:
                arr[lo : lo + self.shard] = buf[name]
            else:
                key = posixpath.join(IMAGES, name, encoder.key(lo // self.shard))
                self._storage.write_durably(key, encoder.encode(buf[name]))

    def close(self) -> None:
        """Write what is left (every shard of the range at least once) and wait."""
        if self._closed:
            return
        try:
            last = (self.rows - 1) // self.shard if self.rows else -1
            if last >= 0:
                self._switch_to(last)
                self._flush(last)
            for pending in self._pending:
                if pending is not None:
                    pending.result()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
            for buf in self._buffers:
                _SHARD_BUFFERS.give_back(buf)
            self._buffers.clear()


class _BufferPool:
    """Shard buffers kept for the next batch of the same process.

    A batch of 64 at S=1024 packs into two shard buffers of ~110 MB each: freed
    and allocated again per batch, they came back as fresh pages (transparent
    huge pages, zeroed by the kernel on first touch), 1-2 ms of system time
    per scan on the project's VM. A process keeps at most ``keep`` sets; a
    writer that finds none allocates its own.
    """

    def __init__(self, keep: int = 2):
        import threading

        self._keep = keep
        self._lock = threading.Lock()
        self._free: dict[tuple, list[dict[str, np.ndarray]]] = {}

    @staticmethod
    def _key(shard: int, specs: dict[str, ArraySpec]) -> tuple:
        return (shard, *((n, a.dtype, a.shape) for n, a in specs.items()))

    def take(self, shard: int, specs: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
        with self._lock:
            free = self._free.get(self._key(shard, specs))
            if free:
                return free.pop()
        return {n: np.empty((shard, *a.shape), a.dtype) for n, a in specs.items()}

    def give_back(self, buffers: dict[str, np.ndarray]) -> None:
        first = next(iter(buffers.values()))
        specs = {n: ArraySpec(n, str(b.dtype), b.shape[1:]) for n, b in buffers.items()}
        key = self._key(first.shape[0], specs)
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self._keep:
                free.append(buffers)
            # Buffers of another layout are dropped: one process, one spec, as a rule.
            for other in [k for k in self._free if k != key]:
                del self._free[other]


_SHARD_BUFFERS = _BufferPool()


class _ShardEncoder:
    """Encodes one whole shard of an image array to the bytes Zarr would write,
    with the array's own codec objects, without Zarr's asynchronous pipeline.

    Zarr spent 1-2.5 ms of CPU per scan on its per-chunk machinery around
    4.5 ms of compression (docs/benchmarks.md). The layout is the sharding
    codec's: the encoded chunks in order, then the index (offset and length of
    each chunk, little-endian uint64) and its CRC-32C, little-endian. Only the
    layout this module creates is accepted (:meth:`for_array` returns None
    otherwise, and the writer goes through Zarr); a test checks that the bytes
    equal Zarr's own for every array.
    """

    def __init__(self, arr, blosc, shard: int):
        self._metadata = arr.metadata
        self._blosc = blosc._blosc_codec  # numcodecs.Blosc, typesize from the dtype
        self._dtype = np.dtype(str(arr.dtype)).newbyteorder("<")
        self._shard = shard

    @classmethod
    def for_array(cls, arr, shard: int) -> _ShardEncoder | None:
        try:  # what a later Zarr moves or renames sends the writer back through Zarr
            import google_crc32c  # noqa: F401  (Zarr's own CRC-32C)
            from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
            from zarr.codecs.sharding import ShardingCodecIndexLocation
        except ImportError:
            return None
        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        inner, index = list(sharding.codecs), list(sharding.index_codecs)
        chunk = (1, *arr.shape[1:])
        if (
            tuple(sharding.chunk_shape) != chunk
            or tuple(arr.metadata.chunk_grid.chunk_shape) != (shard, *arr.shape[1:])
            or sharding.index_location != ShardingCodecIndexLocation.end
            or [type(c) for c in inner] != [BytesCodec, BloscCodec]
            or [type(c) for c in index] != [BytesCodec, Crc32cCodec]
            or any(getattr(c.endian, "value", "little") != "little" for c in (inner[0], index[0]))
            or not hasattr(inner[1], "_blosc_codec")
        ):
            return None
        return cls(arr, inner[1], shard)

    def key(self, shard_index: int) -> str:
        """The shard's object name under the array."""
        zeros = (0,) * (len(self._metadata.shape) - 1)
        return self._metadata.encode_chunk_key((shard_index, *zeros))

    def encode(self, images: np.ndarray) -> list:
        """The shard's bytes, as a list of buffers to write one after another."""
        import google_crc32c

        if images.shape[0] != self._shard:
            raise ValueError(f"a shard holds {self._shard} images, got {images.shape[0]}")
        images = images.astype(self._dtype, copy=False)
        parts = [self._blosc.encode(image) for image in images]
        index = np.zeros((len(parts), 2), "<u8")
        index[:, 1] = [len(p) for p in parts]
        index[1:, 0] = np.cumsum(index[:-1, 1])
        index_bytes = index.tobytes()
        crc = np.array([google_crc32c.value(index_bytes)], "<u4").tobytes()
        return [*parts, index_bytes, crc]
