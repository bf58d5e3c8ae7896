"""A shuffled, sharded training loader over a store: whole shards read ahead,
chunks decoded straight into batch buffers.

:class:`ScanDataset` reads one image per request (a Zarr read of one chunk);
:class:`ScanLoader` reads whole shard objects, one request each, on a thread
pool ahead of need, and decodes each batch's chunks from them with the
store's own codec on threads (Blosc releases the GIL), into one buffer per
array and batch.

The order of an epoch (:func:`epoch_order`) is a pure function of the seed,
the epoch, the selection and the window: shards in a seeded order, the
selected rows of ``window`` consecutive shards pooled and permuted. Ranks get
contiguous blocks of it (:func:`rank_batches`), so each reads mostly its own
shards; a rank's DataLoader worker ``k`` of ``K`` makes the rank's batches
``k, k + K, ...``, which the DataLoader's round robin yields in the
single-process order. Torch is imported only by :meth:`ScanLoader.to_torch`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xraycore._validate import check_int
from xraycore.store import ScanStore, select_rows

__all__ = ["TUNING", "ScanLoader", "epoch_order", "rank_batches"]

#: The tuning keywords of :class:`ScanLoader` and their defaults.
#:
#: - ``window``: shards whose selected rows are pooled and permuted together.
#:   12 puts a batch of 32 on ~11 distinct shards of 16 rows.
#: - ``prefetch``: shard objects read ahead of the batch being decoded.
#: - ``io_threads``: concurrent reads (default 4 on local disk, 16 on S3).
#: - ``decode_threads``: threads decoding a batch (default: the cores, shared
#:   among the DataLoader workers).
#: - ``cache_dir``, ``cache_bytes``: a local cache of shard objects (off by
#:   default; 20 GiB when on), for object stores.
TUNING: dict[str, Any] = {
    "window": 12,
    "prefetch": 8,
    "io_threads": None,
    "decode_threads": None,
    "cache_dir": None,
    "cache_bytes": 20 * 2**30,
}

# The shard order is drawn again (from the same generator) while its rank
# correlation with the storage order is above this, so a small store's epoch
# is not, by chance, close to reading it front to back.
_MAX_ORDER_CORRELATION = 0.05
_ORDER_TRIES = 64


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def epoch_order(shards: np.ndarray, *, seed: int, epoch: int, window: int) -> np.ndarray:
    """The order of one epoch: a permutation of ``range(len(shards))``.

    Parameters
    ----------
    shards : (N,) ndarray of int
        The shard of each selected row, in the selection's order.
    seed, epoch : int
        The order is a pure function of them and of ``shards`` and ``window``.
    window : int
        Shards pooled together: the shards are put in a seeded order, and the
        rows of each ``window`` consecutive shards of it are permuted among
        themselves (WebDataset's shard shuffle plus a shuffle buffer, made
        exact and seekable).

    Returns
    -------
    order : (N,) ndarray of int64
        Indices into the selection.
    """
    shards = np.asarray(shards)
    n = len(shards)
    rng = np.random.default_rng([seed, epoch])
    unique, inverse = np.unique(shards, return_inverse=True)
    position = np.arange(n, dtype=np.float64)
    best, best_rho = None, np.inf
    for _ in range(_ORDER_TRIES):
        perm = rng.permutation(len(unique))
        rank_of_shard = np.empty(len(unique), np.int64)
        rank_of_shard[perm] = np.arange(len(unique))
        window_of_row = rank_of_shard[inverse] // window
        if window_of_row.min() == window_of_row.max():
            best = window_of_row
            break
        rho = abs(float(np.corrcoef(window_of_row, position)[0, 1]))
        if rho < best_rho:
            best, best_rho = window_of_row, rho
        if rho <= _MAX_ORDER_CORRELATION:
            break
    within = rng.random(n)
    return np.lexsort((within, best)).astype(np.int64)


def rank_batches(
    n: int, *, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> np.ndarray:
    """``(start, stop)`` in the epoch order of each batch of ``rank``.

    Each rank gets a contiguous block of the order. Without ``drop_last`` the
    blocks cover every row once (sizes differ by at most one row, the last
    batch of a rank may be short); with it every rank gets the same number of
    full batches and the rows after them are left out this epoch.
    """
    if drop_last:
        per = (n // world_size) // batch_size * batch_size
        lo, hi = rank * per, (rank + 1) * per
    else:
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    starts = np.arange(lo, hi, batch_size, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + batch_size, hi)], axis=1).reshape(-1, 2)


class _BatchBuffers:
    """Batch buffers handed out again once nobody holds them any more.

    A fresh 32 MB buffer per batch comes back from the kernel as new pages,
    zeroed on first touch (15% of the decode time of a 1024 scan, measured).
    A buffer is reused only when the reference from this pool is the last
    one: a batch the caller keeps, a view of it or a tensor made with
    ``torch.from_numpy`` all hold a reference, so nothing in use is overwritten.
    """

    def __init__(self, keep: int = 4):
        self._keep = keep
        self._held: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        # What getrefcount says of an item of a list that nobody else holds,
        # on this interpreter.
        probe = [np.empty(0)]
        self._unused = sys.getrefcount(probe[0])

    def take(self, shape: tuple, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            held = self._held.setdefault(key, [])
            for i in range(len(held)):
                if sys.getrefcount(held[i]) == self._unused:
                    return held[i]
            out = np.empty(*key)
            if len(held) < self._keep:
                held.append(out)
            return out


class _Runtime:
    """What one process holds to read: the store, thread pools, the cache."""

    def __init__(self, loader: ScanLoader, workers: int):
        self.pid = os.getpid()
        storage = loader._storage_args
        if loader._store_pid == self.pid:
            self.store = loader._store
        else:  # forked or unpickled: a client of this process (fsspec#835)
            from xraycore.store.storage import Storage

            self.store = ScanStore(Storage.from_url(*storage))
        self.decoders = {name: self.store.shard_decoder(name) for name in loader.arrays}
        self.keys = {}
        tuning = loader.tuning
        io_threads = tuning["io_threads"] or (4 if self.store.storage.is_local else 16)
        self.io = ThreadPoolExecutor(io_threads, thread_name_prefix="scanloader-io")
        self.decode_threads = tuning["decode_threads"] or max(1, _cores() // max(1, workers))
        self.decode = (
            ThreadPoolExecutor(self.decode_threads, thread_name_prefix="scanloader-decode")
            if self.decode_threads > 1
            else None
        )
        self.buffers = _BatchBuffers()
        self.cache = None
        if tuning["cache_dir"] is not None:
            from xraycore.train._cache import ShardCache

            self.cache = ShardCache(tuning["cache_dir"], tuning["cache_bytes"])

    def key(self, name: str, shard: int) -> str:
        key = self.keys.get((name, shard))
        if key is None:
            key = self.keys[(name, shard)] = self.store.shard_key(name, shard)
        return key


class ScanLoader:
    """Batches of a store's scans for training: shuffled, sharded, resumable.

    Parameters
    ----------
    store : ScanStore or str
        The store, or its URL (``storage_options`` then apply).
    batch_size : int
        Rows per batch.
    split : str, optional
        Keep rows of this split (metadata column ``split``).
    target : str, optional
        Metadata column returned as ``"target"`` (int64, 0/1 for a boolean
        label); rows where it is null are left out.
    where : dict, optional
        Column -> required value.
    arrays : tuple of str
        Stored arrays to return. Default ``("preprocessed",)``.
    shuffle : bool
        Shuffle (default). Without it, rows come in storage order.
    seed : int
        Seeds the order; with the epoch (:meth:`set_epoch`) it fixes it.
    rank, world_size : int
        This process's place among data-parallel ranks.
    drop_last : bool
        Give every rank the same number of full batches.
    storage_options : dict, optional
    **tuning
        See :data:`TUNING`.

    Notes
    -----
    Each batch is a dict: one ``(B, *image_shape)`` array per name in
    ``arrays`` (exactly what ``ScanStore.read(name, rows)`` returns), ``row``
    (int64), ``image_id`` (str) and, with ``target``, ``target`` (int64). The
    shuffle is WebDataset's (shards in a random order, a buffer of samples
    from several shards) with the buffer replaced by a permutation of whole
    windows, so that every epoch is exactly once and can be resumed at any
    batch without reading what it skips.
    """

    def __init__(
        self,
        store,
        *,
        batch_size: int,
        split: str | None = None,
        target: str | None = None,
        where: dict[str, Any] | None = None,
        arrays=("preprocessed",),
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        storage_options: dict[str, Any] | None = None,
        **tuning,
    ):
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.world_size = check_int(world_size, "world_size", minimum=1)
        self.rank = check_int(rank, "rank", minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {rank!r}")
        self.seed = check_int(seed, "seed", minimum=0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        unknown = sorted(set(tuning) - set(TUNING))
        if unknown:
            raise ValueError(f"unknown tuning keyword(s) {unknown}; known: {sorted(TUNING)}")
        self.tuning = {**TUNING, **tuning}
        self.tuning["window"] = check_int(self.tuning["window"], "window", minimum=1)
        self.tuning["prefetch"] = check_int(self.tuning["prefetch"], "prefetch", minimum=0)
        for name in ("io_threads", "decode_threads"):
            if self.tuning[name] is not None:
                self.tuning[name] = check_int(self.tuning[name], name, minimum=1)
        self.tuning["cache_bytes"] = check_int(self.tuning["cache_bytes"], "cache_bytes", minimum=1)
        if self.tuning["cache_dir"] is not None:
            self.tuning["cache_dir"] = os.fspath(self.tuning["cache_dir"])

        if not isinstance(store, ScanStore):
            store = ScanStore.open(store, storage_options)
        self._store = store
        self._store_pid = os.getpid()
        self._storage_args = (store.storage.url, dict(store.storage.storage_options))
        self._runtime: _Runtime | None = None

        if isinstance(arrays, str):
            arrays = (arrays,)
        arrays = tuple(arrays)
        stored = store.arrays()
        if not arrays:
            raise ValueError("arrays must name at least one stored array, got ()")
        for name in arrays:
            if name not in stored:
                raise ValueError(f"unknown array {name!r}; the store has {sorted(stored)}")
        if len(set(arrays)) != len(arrays):
            raise ValueError(f"arrays has duplicates: {arrays!r}")
        self.arrays = arrays
        self._specs = {name: stored[name] for name in arrays}
        self.shard_size = store.shard_size
        self.target = target
        self._select(split=split, target=target, where=where)
        self.epoch = 0
        self._consumed = 0

    # -- the selection ------------------------------------------------------
    def _select(self, *, split, target, where) -> None:
        table = self._store.read_metadata()
        chosen = select_rows(
            table, url=self._store.storage.url, split=split, where=where, target=target
        )
        self.rows = chosen["row"].to_numpy().astype(np.int64)
        self.image_ids = np.array(chosen["image_id"].to_pylist(), dtype=str)
        self.targets = None if target is None else _targets(chosen[target], target)
        self._shards = self.rows // self.shard_size
        digest = hashlib.sha256()
        digest.update(self.rows.tobytes())
        digest.update("\0".join(self.image_ids.tolist()).encode())
        digest.update(repr((target, self.targets is not None and self.targets.tobytes())).encode())
        self.fingerprint = digest.hexdigest()[:16]
        self._cache_keys: dict[int, str] | None = None
        if self.tuning["cache_dir"] is not None:
            self._cache_keys = self._shard_cache_keys(table)

    def _shard_cache_keys(self, table) -> dict[int, str]:
        """A key per selected shard that changes whenever the shard's content may
        have: the store, its pipeline, and every metadata row of the shard."""
        pipeline = self._store.info_or_raise().get("pipeline_hash")
        rows = table["row"].to_pylist()  # ints, None for failed rows
        ids = table["image_id"].to_pylist()
        sums = table["checksum"].to_pylist()
        found: dict[int, list] = {}
        wanted = set(self._shards.tolist())
        for r, i, c in zip(rows, ids, sums, strict=True):
            if r is not None and r // self.shard_size in wanted:
                found.setdefault(r // self.shard_size, []).append((r, i, c))
        base = [self._store.storage.uri(), pipeline, self.shard_size]
        out = {}
        for shard in wanted:
            text = json.dumps([*base, shard, sorted(found.get(shard, []))])
            out[shard] = hashlib.sha256(text.encode()).hexdigest()
        return out

    # -- the order ----------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows), dtype=np.int64)
        return epoch_order(self._shards, seed=self.seed, epoch=epoch, window=self.tuning["window"])

    def _bounds(self) -> np.ndarray:
        return rank_batches(
            len(self.rows),
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The rows of this rank's epoch (``epoch``, default the current one), in order."""
        order = self._order(self.epoch if epoch is None else epoch)
        bounds = self._bounds()
        if len(bounds) == 0:
            return np.zeros(0, np.int64)
        return self.rows[order[bounds[0, 0] : bounds[-1, 1]]]

    def __len__(self) -> int:
        return len(self._bounds())

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own order) from its first batch."""
        self.epoch = check_int(epoch, "epoch", minimum=0)
        self._consumed = 0

    # -- resuming -----------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "selection": self.fingerprint,
            "world_size": self.world_size,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
            "window": self.tuning["window"],
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: the epoch, the batches it has yielded, and what
        fixes the order (a fingerprint of the selection, seed, world size...)."""
        return {"epoch": self.epoch, "batches": self._consumed, "rank": self.rank, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one an uninterrupted
        loader would have yielded next. Refuses a state of another order.

        Ranks step together, so one rank's state serves every rank.
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        mine = self._config()
        wrong = [k for k in mine if state.get(k) != mine[k]]
        if wrong:
            detail = ", ".join(f"{k} {state.get(k)!r} (this loader: {mine[k]!r})" for k in wrong)
            raise ValueError(
                f"state is from a loader with another order: {detail}; "
                "resume with the same selection, seed, world size, batch size and window"
            )
        batches = check_int(state.get("batches"), "state['batches']", minimum=0)
        if batches > len(self):
            raise ValueError(f"state['batches'] is {batches}, but an epoch has {len(self)}")
        self.epoch = check_int(state.get("epoch"), "state['epoch']", minimum=0)
        self._consumed = batches

    # -- iterating ----------------------------------------------------------
    def _start(self) -> int:
        if self._consumed >= len(self):  # the epoch was finished: go through it again
            self._consumed = 0
        return self._consumed

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        start = self._start()
        for batch in self._batches(self.epoch, start, 0, 1):
            self._consumed += 1
            yield batch

    def _runtime_for(self, workers: int) -> _Runtime:
        rt = self._runtime
        if rt is None or rt.pid != os.getpid():
            rt = self._runtime = _Runtime(self, workers)
        return rt

    def _batches(
        self, epoch: int, start: int, worker: int, workers: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start + worker``, ``start + worker + workers``, ... of
        this rank's epoch ``epoch``."""
        order = self._order(epoch)
        bounds = self._bounds()[start + worker :: workers]
        plan = [order[lo:hi] for lo, hi in bounds]
        if not plan:
            return
        yield from _read_batches(self, self._runtime_for(workers), plan)

    # -- torch --------------------------------------------------------------
    def to_torch(self):
        """A ``torch.utils.data.IterableDataset`` yielding the same batches as
        tensors (``torch.from_numpy``, no copy), split among a DataLoader's
        workers by batch: ``DataLoader(loader.to_torch(), batch_size=None,
        num_workers=k)`` yields this loader's order for any ``k``.

        Iterating it does not advance :meth:`state_dict`; :meth:`dataloader` does.
        """
        from xraycore.train._torch import ScanBatches

        return ScanBatches(self)

    def dataloader(self, num_workers: int = 0, **kwargs):
        """A ``torch.utils.data.DataLoader`` over :meth:`to_torch` whose
        iteration advances this loader's count, so that :meth:`state_dict`
        taken after k of its batches resumes after them. ``kwargs`` go to the
        DataLoader (not ``batch_size``: batches are made here)."""
        from xraycore.train._torch import counting_dataloader

        return counting_dataloader(self, num_workers=num_workers, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runtime"] = None  # thread pools and open clients stay in their process
        state["_store_pid"] = None
        state["_store"] = None
        return state


def _read_batches(
    loader: ScanLoader, rt: _Runtime, plan: list[np.ndarray]
) -> Iterator[dict[str, np.ndarray]]:
    """Read the shards of ``plan``'s batches ahead, decode each batch into its buffers."""
    sharded = [n for n in loader.arrays if rt.decoders[n] is not None]
    rows_of = loader.rows
    per_batch = []  # [(shard, rows in shard, positions in batch)] per batch
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for t, idx in enumerate(plan):
        shards = loader._shards[idx]
        sort = np.argsort(shards, kind="stable")
        uniq, begin = np.unique(shards[sort], return_index=True)
        groups = []
        for s, lo, hi in zip(uniq.tolist(), begin, [*begin[1:], len(sort)], strict=True):
            positions = sort[lo:hi]
            groups.append((s, (rows_of[idx[positions]] % loader.shard_size).tolist(), positions))
            first_use.setdefault(s, t)
            last_use[s] = t
        per_batch.append(groups)
    reads = sorted(first_use, key=lambda s: (first_use[s], s))
    reads_end = np.searchsorted([first_use[s] for s in reads], np.arange(len(plan)), side="right")
    prefetch = loader.tuning["prefetch"]
    pending: dict[tuple[str, int], Any] = {}
    submitted = 0

    def fetch(name: str, shard: int):
        decoder = rt.decoders[name]
        cache_key = None
        if rt.cache is not None and loader._cache_keys is not None:
            cache_key = f"{loader._cache_keys[shard]}-{name}"
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

    def decode(task) -> None:
        read, fill, decoder, in_shard, positions, out = task
        found = read.result()
        if found is None:  # an absent shard reads as the fill value, as through Zarr
            out[positions] = fill
        else:
            decoder.decode_chunks(*found, in_shard, out, positions)

    def start(t: int):
        """Submit batch ``t``'s reads (and those ``prefetch`` ahead) and, with
        decode threads, its decoding; returns what :func:`finish` needs."""
        nonlocal submitted
        want = min(len(reads), int(reads_end[t]) + prefetch)
        while submitted < want:
            s = reads[submitted]
            for name in sharded:
                pending[(name, s)] = rt.io.submit(fetch, name, s)
            submitted += 1
        idx = plan[t]
        rows = rows_of[idx]
        batch: dict[str, Any] = {}
        tasks = []
        for name in loader.arrays:
            spec = loader._specs[name]
            if name in sharded:
                decoder = rt.decoders[name]
                out = rt.buffers.take((len(idx), *spec.shape), decoder.dtype)
                fill = decoder.fill_value
                tasks += [
                    (pending[(name, s)], fill, decoder, r, p, out) for s, r, p in per_batch[t]
                ]
                batch[name] = out
            else:  # a layout the decoder does not know: through Zarr, rows in order
                sort = np.argsort(rows)
                out = np.empty((len(idx), *spec.shape), spec.dtype)
                out[sort] = rt.store.read(name, rows[sort].tolist(), decode=False)
                batch[name] = out
        if rt.decode is not None and len(tasks) > 1:
            return batch, [rt.decode.submit(decode, task) for task in tasks]
        return batch, tasks

    def finish(t: int, batch: dict[str, Any], work: list) -> dict[str, Any]:
        for item in work:
            if isinstance(item, tuple):
                decode(item)
            else:
                item.result()
        for name in loader.arrays:
            batch[name] = loader._specs[name].unpack(batch[name])
        for s, _, _ in per_batch[t]:
            if last_use[s] == t:
                for name in sharded:
                    pending.pop((name, s), None)
        idx = plan[t]
        batch["row"] = rows_of[idx]
        batch["image_id"] = loader.image_ids[idx]
        if loader.targets is not None:
            batch["target"] = loader.targets[idx]
        return batch

    # With decode threads, batch t + 1 is decoding while batch t is finished
    # and handed out: the threads never wait for the tail of a batch, and the
    # caller's work on a batch overlaps the decoding of the next.
    ahead = rt.decode is not None
    current = start(0)
    try:
        for t in range(len(plan)):
            following = start(t + 1) if ahead and t + 1 < len(plan) else None
            batch = finish(t, *current)
            current = None
            yield batch
            # Drop this frame's references, so the caller's are the only ones left.
            batch = None
            current = (
                following
                if following is not None
                else (start(t + 1) if t + 1 < len(plan) else None)
            )
            following = None
    finally:
        for f in pending.values():
            f.cancel()


def _targets(column, name: str) -> np.ndarray:
    """A boolean or integer label column as int64 (a class index); any other
    type is refused rather than squeezed into 0/1."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_boolean(kind) or pa.types.is_integer(kind)):
        raise ValueError(
            f"target {name!r} must be a boolean or integer column, got {kind}: "
            "map it to class indices first"
        )
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
