"""The store contract: ``STORE/images.zarr`` (Zarr v3) + ``STORE/metadata.parquet``.

- Arrays ``preprocessed`` (N, S, S) uint8, ``log``, ``gradient_magnitude``,
  ``sobel`` (N, S, S) float16, ``canny``, ``mask`` (N, S, S) bool and
  ``histogram`` (N, 256) int64. Chunks hold one image; shards hold
  ``shard_size`` images and are always written whole by one writer.
- ``metadata.parquet`` is a Parquet dataset directory: one part file per
  committed batch, compacted to one file at the end of a run. A part is written
  only after the pixels it describes, so a row that says ``ok`` has its pixels
  durably in the store.
- The group's attributes record the pipeline spec and its hash; a store refuses
  a different spec unless asked to overwrite.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np

from .pipeline import PipelineSpec
from .storage import Storage

__all__ = [
    "ARRAY_DTYPES",
    "IMAGES",
    "METADATA",
    "PREDICTIONS",
    "ScanStore",
    "StoreConflictError",
]

IMAGES = "images.zarr"
METADATA = "metadata.parquet"
PREDICTIONS = "predictions.parquet"
ARRAY_DTYPES = {
    "preprocessed": "uint8",
    "log": "float16",
    "gradient_magnitude": "float16",
    "sobel": "float16",
    "canny": "bool",
    "mask": "bool",
    "histogram": "int64",
}
STORE_FORMAT = 1


class StoreConflictError(ValueError):
    """The store was written with another pipeline spec or shard size."""


def _arrays_for(spec: PipelineSpec) -> list[str]:
    return ["preprocessed", *spec.outputs]


class ScanStore:
    """A store of processed scans under one URL (local path or ``s3://``)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> ScanStore:
        return cls(Storage.from_url(url, storage_options))

    # -- Zarr ---------------------------------------------------------------
    def _group(self, mode: str = "r"):
        import zarr

        return zarr.open_group(self.storage.zarr_store(IMAGES), mode=mode, zarr_format=3)

    def info(self) -> dict[str, Any] | None:
        """The store's recorded attributes, or None when there is no store yet."""
        if not self.storage.exists(IMAGES, "zarr.json"):
            return None
        return dict(self._group("r").attrs)

    def initialise(self, spec: PipelineSpec, *, shard_size: int, overwrite: bool = False) -> None:
        """Create the group and arrays, or check that an existing store matches."""
        import zarr
        from zarr.codecs import BloscCodec

        info = self.info()
        if info is not None and not overwrite:
            if info.get("pipeline_hash") != spec.hash:
                raise StoreConflictError(
                    f"store {self.storage.url} was written with pipeline "
                    f"{info.get('pipeline_hash')}, this run's pipeline is {spec.hash}: "
                    "its outputs would be stale or mixed. "
                    "Use another --out, or pass --overwrite to discard the store and start again."
                )
            if info.get("shard_size") != shard_size:
                raise StoreConflictError(
                    f"store {self.storage.url} uses batches (shards) of {info.get('shard_size')} "
                    f"images, not {shard_size}: rerun with --batch-size {info.get('shard_size')}"
                )
            return
        if info is not None and overwrite:
            self.storage.remove(IMAGES)
            self.storage.remove(METADATA)
            self.storage.remove(PREDICTIONS)
        self.storage.makedirs()
        group = zarr.open_group(self.storage.zarr_store(IMAGES), mode="w", zarr_format=3)
        s = spec.size
        for name in _arrays_for(spec):
            dtype = ARRAY_DTYPES[name]
            if name == "histogram":
                shape, chunks, shards = (0, 256), (shard_size, 256), None
            else:
                shape, chunks, shards = (0, s, s), (1, s, s), (shard_size, s, s)
            shuffle = "bitshuffle" if dtype in ("uint8", "bool") else "shuffle"
            group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                shards=shards,
                compressors=BloscCodec(cname="lz4", clevel=5, shuffle=shuffle),
                fill_value=False if dtype == "bool" else 0,
            )
        group.attrs.update(
            {
                "format": STORE_FORMAT,
                "pipeline_hash": spec.hash,
                "pipeline": spec.to_dict(),
                "shard_size": shard_size,
                "size": s,
                "arrays": _arrays_for(spec),
            }
        )

    def capacity(self) -> int:
        return int(self._group("r")["preprocessed"].shape[0])

    def ensure_capacity(self, rows: int) -> None:
        """Grow every array to hold ``rows`` rows (metadata-only for Zarr)."""
        group = self._group("a")
        for name in group.attrs["arrays"]:
            arr = group[name]
            if arr.shape[0] < rows:
                arr.resize((rows, *arr.shape[1:]))

    def write_shard(self, start: int, blocks: dict[str, np.ndarray]) -> None:
        """Write whole shards: ``blocks[name]`` holds ``shard_size`` rows from ``start``."""
        group = self._group("a")
        shard = int(group.attrs["shard_size"])
        if start % shard:
            raise ValueError(f"start row {start} is not aligned to shards of {shard}")
        for name, block in blocks.items():
            if block.shape[0] != shard:
                raise ValueError(f"{name}: block of {block.shape[0]} rows, shard is {shard}")
            group[name][start : start + shard] = block

    def read(self, name: str, rows) -> np.ndarray:
        """Rows of one array (``rows`` an int, slice or list of ints)."""
        arr = self._group("r")[name]
        return arr.oindex[rows] if isinstance(rows, list) else arr[rows]

    # -- Parquet ------------------------------------------------------------
    # Each Parquet dataset (metadata, predictions) is a directory of part files:
    # one per committed batch, compacted to one file at the end of a run.
    def write_part(self, dataset: str, rows: list[dict[str, Any]], part: str) -> None:
        """Commit rows as one part file of ``dataset`` (atomic publish)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        # from_pylist infers columns from the first row: give every row all keys.
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])
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

    def read_dataset(self, dataset: str, *, key: tuple[str, ...], time_column: str):
        """All rows of ``dataset``, the latest per ``key``, as a pyarrow Table (or None)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = [
            pq.read_table(io.BytesIO(self.storage.read_bytes(path)))
            for path in self._part_paths(dataset)
        ]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default")
        order = pc.sort_indices(
            table, [*((k, "ascending") for k in key), (time_column, "descending")]
        )
        table = table.take(order)
        keys = list(zip(*(table.column(k).to_pylist() for k in key), strict=True))
        keep = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
        return table.take(pa.array(keep, pa.int64()))

    def replace_dataset(self, dataset: str, table, run_id: str) -> None:
        """Publish ``table`` as the one file of ``dataset``, then drop the older parts."""
        import pyarrow.parquet as pq

        before = self._part_paths(dataset)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        name = f"part-compacted-{run_id}.parquet"
        self.storage.write_bytes_atomic(posixpath.join(dataset, name), buf.getvalue())
        for path in before:
            if posixpath.basename(path) != name:
                self.storage.fs.rm(path)

    def write_metadata_part(self, rows: list[dict[str, Any]], part: str) -> None:
        self.write_part(METADATA, rows, part)

    def read_metadata(self):
        """All metadata rows, one per source (the latest), sorted by image_id (or None)."""
        table = self.read_dataset(METADATA, key=("source",), time_column="processed_at")
        return None if table is None else table.sort_by([("image_id", "ascending")])

    def compact_metadata(self, run_id: str) -> int:
        """Replace all metadata parts by one deduplicated file; returns its row count."""
        table = self.read_metadata()
        if table is None:
            return 0
        self.replace_dataset(METADATA, table, run_id)
        return table.num_rows

    def read_predictions(self):
        """Predictions, one per (image, model) (re-classifying replaces), or None."""
        table = self.read_dataset(
            PREDICTIONS, key=("image_id", "model_sha256"), time_column="classified_at"
        )
        return None if table is None else table.sort_by([("row", "ascending")])

    def compact_predictions(self, run_id: str) -> int:
        table = self.read_predictions()
        if table is None:
            return 0
        self.replace_dataset(PREDICTIONS, table, run_id)
        return table.num_rows
