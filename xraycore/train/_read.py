"""The training loader's read pipeline: whole shard objects read ahead on a
thread pool, each batch's chunks decoded from them straight into its buffers.

Each shard a plan of batches needs is read once, ``prefetch`` shards ahead of
the batch being decoded, with one request (a memory map on local disk), and
dropped after the last batch that uses it. Chunks are decoded with the store's
own codec (:class:`~xraycore.store.ShardDecoder`) on threads, since Blosc
releases the GIL, into buffers lent by a :class:`~xraycore.store.BufferPool`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycore.store.packing import ArraySpec
from xraycore.train._runtime import ReadRuntime

__all__ = ["Selection", "read_batches"]


@dataclass(frozen=True)
class Selection:
    """The rows a loader selected, and what reading their batches needs.

    ``rows``, ``shards``, ``image_ids``, ``targets`` and ``target_mask`` (or
    None) are per selected row; ``cache_keys`` names each selected shard in the shard cache (None
    without a cache).
    """

    arrays: tuple[str, ...]
    specs: dict[str, ArraySpec]
    rows: np.ndarray
    shards: np.ndarray
    shard_size: int
    image_ids: np.ndarray
    targets: np.ndarray | None
    target_mask: np.ndarray | None
    cache_keys: dict[int, str] | None


def read_batches(
    selection: Selection, rt: ReadRuntime, plan: list[np.ndarray], *, prefetch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Read the shards of ``plan``'s batches ahead, decode each batch into its buffers.

    Parameters
    ----------
    selection : Selection
    rt : ReadRuntime
        This process's store, pools and cache.
    plan : list of (B,) ndarray of int
        Each batch's indices into the selection, in the order to yield them.
    prefetch : int
        Shard objects read ahead of the batch being decoded.

    Yields
    ------
    batch : dict
        One array per name in ``selection.arrays``, ``row``, ``image_id`` and,
        with targets, ``target`` (and ``target_mask`` with several).
    """
    reads = _BatchReads(selection, rt, plan, prefetch)
    # With decode threads, batch t + 1 is decoding while batch t is finished
    # and handed out: the threads never wait for the tail of a batch, and the
    # caller's work on a batch overlaps the decoding of the next.
    ahead = rt.decode is not None
    current = reads.start(0)
    try:
        for t in range(len(plan)):
            following = reads.start(t + 1) if ahead and t + 1 < len(plan) else None
            batch = reads.finish(t, *current)
            current = None
            yield batch
            # Drop this frame's references, so the caller's are the only ones left.
            batch = None
            current = (
                following
                if following is not None
                else (reads.start(t + 1) if t + 1 < len(plan) else None)
            )
            following = None
    finally:
        reads.cancel()


def _shard_groups(
    selection: Selection, plan: list[np.ndarray]
) -> tuple[list[list[tuple]], dict[int, int], dict[int, int]]:
    """Per batch ``[(shard, rows in shard, positions in batch)]``, and the first
    and last batch that use each shard."""
    per_batch = []
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for t, idx in enumerate(plan):
        shards = selection.shards[idx]
        sort = np.argsort(shards, kind="stable")
        uniq, begin = np.unique(shards[sort], return_index=True)
        groups = []
        for s, lo, hi in zip(uniq.tolist(), begin, [*begin[1:], len(sort)], strict=True):
            positions = sort[lo:hi]
            in_shard = (selection.rows[idx[positions]] % selection.shard_size).tolist()
            groups.append((s, in_shard, positions))
            first_use.setdefault(s, t)
            last_use[s] = t
        per_batch.append(groups)
    return per_batch, first_use, last_use


def _decode(task) -> None:
    read, fill, decoder, in_shard, positions, out = task
    found = read.result()
    if found is None:  # an absent shard reads as the fill value, as through Zarr
        out[positions] = fill
    else:
        decoder.decode_chunks(*found, in_shard, out, positions)


class _BatchReads:
    """The shard reads in flight for one plan of batches, and each batch's decoding.

    Holds no batch buffer between calls: what :meth:`start` returns is the only
    reference the pipeline keeps, so a batch the caller dropped is free again.
    """

    def __init__(self, selection: Selection, rt: ReadRuntime, plan: list[np.ndarray], prefetch):
        self.selection, self.rt, self.plan, self.prefetch = selection, rt, plan, prefetch
        self.sharded = [n for n in selection.arrays if rt.decoders[n] is not None]
        self.per_batch, first_use, self.last_use = _shard_groups(selection, plan)
        self.reads = sorted(first_use, key=lambda s: (first_use[s], s))
        self.reads_end = np.searchsorted(
            [first_use[s] for s in self.reads], np.arange(len(plan)), side="right"
        )
        self.pending: dict[tuple[str, int], Any] = {}
        self.submitted = 0

    def fetch(self, name: str, shard: int):
        """``(bytes, index)`` of shard ``shard`` of ``name`` (from the cache when
        it has it), or None for a shard that was never written."""
        rt, decoder = self.rt, self.rt.decoders[name]
        cache_key = None
        if rt.cache is not None and self.selection.cache_keys is not None:
            cache_key = f"{self.selection.cache_keys[shard]}-{name}"
            data = rt.cache.get(cache_key)
            if data is not None:
                try:
                    return decoder.chunk_index(data)
                except ValueError:
                    rt.cache.discard(cache_key)
        storage = rt.store.storage
        if storage.is_local and cache_key is None:
            data = storage.map_bytes(rt.key(name, shard))
        else:
            data = storage.read_many([rt.key(name, shard)])[0]
        if data is None:
            return None
        found = decoder.chunk_index(data)
        if cache_key is not None:
            rt.cache.put(cache_key, data)
        return found

    def _submit_reads(self, t: int) -> None:
        """Submit the reads of batch ``t``'s shards and of those ``prefetch`` ahead."""
        want = min(len(self.reads), int(self.reads_end[t]) + self.prefetch)
        while self.submitted < want:
            s = self.reads[self.submitted]
            for name in self.sharded:
                self.pending[(name, s)] = self.rt.io.submit(self.fetch, name, s)
            self.submitted += 1

    def start(self, t: int):
        """Submit batch ``t``'s reads (and those ``prefetch`` ahead) and, with
        decode threads, its decoding; returns what :meth:`finish` needs."""
        self._submit_reads(t)
        rt, sel = self.rt, self.selection
        idx = self.plan[t]
        rows = sel.rows[idx]
        layout = {n: ((len(idx), *sel.specs[n].shape), rt.decoders[n].dtype) for n in self.sharded}
        buffers = rt.buffers.lend(layout) if layout else {}
        batch: dict[str, Any] = {}
        tasks = []
        for name in sel.arrays:
            if name in buffers:
                decoder, out = rt.decoders[name], buffers[name]
                tasks += [
                    (self.pending[(name, s)], decoder.fill_value, decoder, r, p, out)
                    for s, r, p in self.per_batch[t]
                ]
                batch[name] = out
            else:  # a layout the decoder does not know: through Zarr, rows in order
                spec = sel.specs[name]
                sort = np.argsort(rows)
                out = np.empty((len(idx), *spec.shape), spec.dtype)
                out[sort] = rt.store.read(name, rows[sort].tolist(), decode=False)
                batch[name] = out
        if rt.decode is not None and len(tasks) > 1:
            return batch, [rt.decode.submit(_decode, task) for task in tasks]
        return batch, tasks

    def finish(self, t: int, batch: dict[str, Any], work: list) -> dict[str, Any]:
        """Batch ``t`` decoded, unpacked and labelled; shards it used last dropped."""
        sel = self.selection
        for item in work:
            if isinstance(item, tuple):
                _decode(item)
            else:
                item.result()
        for name in sel.arrays:
            batch[name] = sel.specs[name].unpack(batch[name])
        for s, _, _ in self.per_batch[t]:
            if self.last_use[s] == t:
                for name in self.sharded:
                    self.pending.pop((name, s), None)
        idx = self.plan[t]
        batch["row"] = sel.rows[idx]
        batch["image_id"] = sel.image_ids[idx]
        if sel.targets is not None:
            batch["target"] = sel.targets[idx]
        if sel.target_mask is not None:
            batch["target_mask"] = sel.target_mask[idx]
        return batch

    def cancel(self) -> None:
        """Cancel the reads not yet started (the caller stopped early)."""
        for f in self.pending.values():
            f.cancel()
