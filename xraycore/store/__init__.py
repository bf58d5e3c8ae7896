"""The store: ``STORE/images.zarr`` (Zarr v3) + ``STORE/metadata.delta`` (Delta Lake).

What is stored, and how: the files and format (:mod:`xraycore.store.schema`), the
tables' columns (:mod:`xraycore.store.columns`) and the arrays' packing
(:mod:`xraycore.store.packing`); this package reads and writes them. What goes
into a store is :mod:`xraycore.sources`.

- One array per output, one image per chunk, ``shard_size`` images per shard
  (:mod:`._layout`). Rows are handed out in batches of ``batch_size`` (a
  multiple of ``shard_size``); a batch is written by one :class:`ShardWriter`
  that writes each of its shards whole, once, so no shard ever has two
  writers. Shards are encoded and decoded whole with the arrays' own codecs
  (:mod:`._codec`), into buffers reused within a process (:class:`BufferPool`,
  which the training loader's batches share).
- ``metadata.delta`` and ``predictions.delta`` are Delta Lake tables
  (:mod:`._delta`): every batch a commit, every commit a version that can be
  opened again (``ScanStore.open(url, version=k)``). A batch commits only after
  the pixels it describes, so a row that says ``ok`` has its pixels durably in
  the store; rows are never rewritten in place, so a kept version's pixels stay.
- The group's attributes record the store format, the pipeline spec and its
  hash; a store refuses a different spec unless asked to overwrite, and a store
  of another format always.
"""

from xraycore.store._codec import BufferPool, ShardDecoder, ShardFormatError
from xraycore.store._delta import FencedCommitError, VersionRemovedError
from xraycore.store._scans import ScanStore, StoreConflictError
from xraycore.store._select import select_rows
from xraycore.store._writer import ShardWriter
from xraycore.store.schema import StoreFormatError

__all__ = [
    "BufferPool",
    "FencedCommitError",
    "ScanStore",
    "ShardDecoder",
    "ShardFormatError",
    "ShardWriter",
    "StoreConflictError",
    "StoreFormatError",
    "VersionRemovedError",
    "select_rows",
]
