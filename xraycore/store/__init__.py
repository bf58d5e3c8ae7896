"""The store: ``STORE/images.zarr`` (Zarr v3) + ``STORE/metadata.parquet``.

What is stored, and how, is :mod:`xraycore.store.schema`; this package reads and
writes it.

- One array per output, one image per chunk, ``shard_size`` images per shard
  (:mod:`._layout`). Rows are handed out in batches of ``batch_size`` (a
  multiple of ``shard_size``); a batch is written by one :class:`ShardWriter`
  that writes each of its shards whole, once, so no shard ever has two
  writers. Shards are encoded and decoded whole with the arrays' own codecs
  (:mod:`._codec`), into buffers reused within a process (:class:`BufferPool`,
  which the training loader's batches share).
- ``metadata.parquet`` is a Parquet dataset directory (:mod:`._table`): one part
  file per committed batch, compacted to one file at the end of a run. A part
  is written only after the pixels it describes, so a row that says ``ok`` has
  its pixels durably in the store.
- The group's attributes record the store format, the pipeline spec and its
  hash; a store refuses a different spec unless asked to overwrite, and a store
  of another format always.
"""

from xraycore.store._codec import BufferPool, ShardDecoder, ShardFormatError
from xraycore.store._scans import ScanStore, StoreConflictError
from xraycore.store._select import select_rows
from xraycore.store._writer import ShardWriter
from xraycore.store.schema import StoreFormatError

__all__ = [
    "BufferPool",
    "ScanStore",
    "ShardDecoder",
    "ShardFormatError",
    "ShardWriter",
    "StoreConflictError",
    "StoreFormatError",
    "select_rows",
]
