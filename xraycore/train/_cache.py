"""A local cache of a store's shard objects for :class:`xraycore.train.loader.ScanLoader`.

One file per shard object under ``cache_dir``, named by a key that changes
whenever the shard's content may have (the loader's
:meth:`~xraycore.train.loader.ScanLoader` builds it from the store URL, the array,
the shard index, the pipeline hash and the metadata rows of the shard). Files
are written whole (a temporary file renamed into place), so several
DataLoader workers and ranks may share one folder; the least recently used
files are removed when the folder grows past its size limit.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

from xraycore.store.durable import write_atomic
from xraycore.store.schema import is_temporary

__all__ = ["ShardCache"]


class ShardCache:
    """Shard bytes by key in the folder ``folder``, at most ``max_bytes`` of them.

    A hit refreshes the file's modification time: eviction removes the oldest
    first (least recently used). The size is tracked per process and checked
    against the folder when it crosses the limit, so processes sharing the
    folder keep it near the limit together.
    """

    def __init__(self, folder: str, max_bytes: int):
        self.folder = os.fspath(folder)
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._bytes: int | None = None

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key)

    def get(self, key: str):
        """The entry's bytes (a read-only memory map: no copy), or None."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile by another process
            os.utime(path)
        with self._lock:
            self.hits += 1
        return data

    def discard(self, key: str) -> None:
        """Drop an entry found unreadable (a torn file after a crash)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def put(self, key: str, data) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            write_atomic(path, data)
        except OSError:  # a full disk: the cache is an optimisation, reading goes on
            return
        with self._lock:
            if self._bytes is None:
                self._bytes = self._scan_bytes()
            else:
                self._bytes += len(data)
            if self._bytes > self.max_bytes:
                self._bytes = self._evict()

    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        for sub in os.scandir(self.folder):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if is_temporary(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, entry.path))
        return out

    def _scan_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> int:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
        return total
