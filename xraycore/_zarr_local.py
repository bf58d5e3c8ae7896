"""A Zarr ``LocalStore`` whose writes are durable (a module of its own so that
:mod:`xraycore.storage` imports Zarr only when a store is opened, and so that
the class pickles: a ``ScanDataset`` travels to DataLoader workers)."""

from __future__ import annotations

import asyncio
import os

import zarr.storage

from .durable import write_durably

__all__ = ["DurableLocalStore"]


class DurableLocalStore(zarr.storage.LocalStore):
    """Writes through :func:`xraycore.durable.write_durably`: a temporary file,
    synced, dropped from the page cache, renamed into place."""

    async def set(self, key, value) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        path = os.path.join(str(self.root), key)
        await asyncio.to_thread(write_durably, path, [value.as_buffer_like()])
