"""A Zarr ``LocalStore`` whose writes are durable (a module of its own so that
:mod:`xraycore.store.storage` imports Zarr only when a store is opened, and so that
the class pickles: a store travels to DataLoader and Dask workers).

Built on Zarr's public :class:`zarr.storage.WrapperStore`: every method but
``set`` is the wrapped ``LocalStore``'s own, so no private Zarr API is used.
"""

from __future__ import annotations

import asyncio
import os

import zarr.storage

from xraycore.store.durable import write_durably

__all__ = ["DurableLocalStore"]


class DurableLocalStore(zarr.storage.WrapperStore):
    """Writes through :func:`xraycore.store.durable.write_durably`: a temporary file,
    synced, dropped from the page cache, renamed into place."""

    def __init__(self, store: zarr.storage.LocalStore | str) -> None:
        if not isinstance(store, zarr.storage.LocalStore):
            store = zarr.storage.LocalStore(store)
        super().__init__(store)
        self._root = str(store.root)

    async def set(self, key, value) -> None:
        if self.read_only:
            raise ValueError(f"store {self._root} is read-only")
        path = os.path.join(self._root, key)
        await asyncio.to_thread(write_durably, path, [value.as_buffer_like()])
