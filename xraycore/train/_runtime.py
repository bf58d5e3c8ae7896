"""What one process holds to read a store for training: the store, its thread
pools, the batch buffers and the shard cache.

A :class:`~xraycore.train.loader.ScanLoader` makes one per process (threads and
open clients are never copied into a forked DataLoader worker or a pickle).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xraycore.store import BufferPool, ScanStore

__all__ = ["ReadRuntime", "available_cores"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ReadRuntime:
    """The store, thread pools, batch buffers and cache of one reading process.

    Parameters
    ----------
    store : ScanStore
        A store opened in this process.
    arrays : tuple of str
        The arrays read; each gets its store's shard decoder (None for a layout
        the decoder does not know).
    tuning : dict
        The loader's resolved :data:`~xraycore.train.loader.TUNING`.
    workers : int
        DataLoader workers sharing the cores: the default decode threads are
        the cores divided among them.
    """

    def __init__(
        self, store: ScanStore, *, arrays: tuple[str, ...], tuning: dict[str, Any], workers: int
    ):
        self.pid = os.getpid()
        self.store = store
        self.decoders = {name: store.shard_decoder(name) for name in arrays}
        self.keys: dict[tuple[str, int], str] = {}
        io_threads = tuning["io_threads"] or (4 if store.storage.is_local else 16)
        self.io = ThreadPoolExecutor(io_threads, thread_name_prefix="scanloader-io")
        self.decode_threads = tuning["decode_threads"] or max(
            1, available_cores() // max(1, workers)
        )
        self.decode = (
            ThreadPoolExecutor(self.decode_threads, thread_name_prefix="scanloader-decode")
            if self.decode_threads > 1
            else None
        )
        # Batch t is handed out while batch t + 1 decodes: four sets of buffers
        # leave two for batches the caller still holds.
        self.buffers = BufferPool(keep=4)
        self.cache = None
        if tuning["cache_dir"] is not None:
            from xraycore.train._cache import ShardCache

            self.cache = ShardCache(tuning["cache_dir"], tuning["cache_bytes"])

    def key(self, name: str, shard: int) -> str:
        """The object key of shard ``shard`` of array ``name`` (looked up once)."""
        key = self.keys.get((name, shard))
        if key is None:
            key = self.keys[(name, shard)] = self.store.shard_key(name, shard)
        return key
