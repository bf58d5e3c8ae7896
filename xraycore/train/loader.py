"""A shuffled, sharded training loader over a store: whole shards read ahead,
chunks decoded straight into batch buffers.

:class:`ScanDataset` reads one image per request (a Zarr read of one chunk);
:class:`ScanLoader` reads whole shard objects, one request each, on a thread
pool ahead of need, and decodes each batch's chunks from them with the
store's own codec on threads (Blosc releases the GIL), into one buffer per
array and batch (:mod:`._read`, with the threads of :mod:`._runtime`).

The order of an epoch (:func:`epoch_order`) is a pure function of the seed,
the epoch, the selection and the window: shards in a seeded order, the
selected rows of ``window`` consecutive shards pooled and permuted. Ranks get
contiguous blocks of it (:func:`rank_batches`), so each reads mostly its own
shards; a rank's DataLoader worker ``k`` of ``K`` makes the rank's batches
``k, k + K, ...``, which the DataLoader's round robin yields in the
single-process order (:mod:`._order`). Torch is imported only by
:meth:`ScanLoader.to_torch`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from xraycore._validate import check_int
from xraycore.store import ScanStore, select_rows
from xraycore.train._order import epoch_order, rank_batches
from xraycore.train._read import Selection, read_batches
from xraycore.train._runtime import ReadRuntime, available_cores
from xraycore.train._targets import UNCERTAIN, LabelMatrix, label_matrix, target_columns

__all__ = [
    "TUNING",
    "ScanLoader",
    "available_cores",
    "epoch_order",
    "lineage_image_ids",
    "rank_batches",
]

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
    targets : list of str or "findings", optional
        Several label columns (findings or column names; ``"findings"``: every
        ``finding_*`` column) returned as ``"target"`` (float32, ``(B, K)``) with
        ``"target_mask"`` (bool, ``(B, K)``: False where the label is missing or,
        under ``uncertain="ignore"``, uncertain). Rows with no counted label are
        left out. Not with ``target``.
    uncertain : {"ignore", "zeros", "ones"}
        With ``targets``: what an uncertain label (-1) becomes. Default "ignore".
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
    version : int, optional
        Read the rows of this version of the store (``xray log``); default the
        latest, which the loader then pins: :attr:`version` says which it read.
    **tuning
        See :data:`TUNING`.

    Attributes
    ----------
    target_names : tuple of str
        With ``targets``: the K columns, in the order of ``"target"``'s columns.
    positives, negatives : (K,) ndarray of int64
        With ``targets``: per column, the selected rows whose counted label is 1 / 0.
    version : int
        The store version whose rows this loader reads.
    image_ids : numpy.ndarray of str
        The selected rows' ids, in row order (:func:`~xraycore.train.lineage.rows_sha256`
        of them is what a trained model records).
    consumed : int
        Batches of the current epoch yielded so far: what :meth:`state_dict`
        saves, and what iterating the loader or its :meth:`dataloader` advances.

    Notes
    -----
    Each batch is a dict: one ``(B, *image_shape)`` array per name in
    ``arrays`` (exactly what ``ScanStore.read(name, rows)`` returns), ``row``
    (int64), ``image_id`` (str) and, with ``target``, ``target`` (int64), or
    with ``targets``, ``target`` and ``target_mask``. Labels are read once from
    the metadata, not per image. The
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
        targets: list[str] | str | None = None,
        uncertain: str = "ignore",
        where: dict[str, Any] | None = None,
        arrays=("preprocessed",),
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        storage_options: dict[str, Any] | None = None,
        version: int | None = None,
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
        # Pinned: the rows come from one version however the store moves on.
        self.version = store.version if version is None else version
        if self.version is not None and not (store.read_only and store.version == self.version):
            store = ScanStore.open(store.storage.url, store.storage.storage_options, self.version)
        self._store = store
        self._store_pid = os.getpid()
        self._storage_args = (store.storage.url, dict(store.storage.storage_options))
        self._runtime: ReadRuntime | None = None

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
        if target is not None and targets is not None:
            raise ValueError("give target (one column) or targets (several), not both")
        if uncertain not in UNCERTAIN:
            raise ValueError(f"uncertain must be one of {UNCERTAIN}, got {uncertain!r}")
        self.uncertain = uncertain
        self.selection = {"split": split, "where": where, "target": target}
        if targets is not None:
            self.selection.update(targets=targets, uncertain=uncertain)
        self._select(split=split, target=target, targets=targets, where=where)
        self.epoch = 0
        self.consumed = 0

    @property
    def store(self) -> ScanStore:
        """The store this loader reads, opened at :attr:`version` (read-only)."""
        return self._store

    @classmethod
    def from_lineage(
        cls,
        training: dict[str, Any],
        *,
        storage_options: dict[str, Any] | None = None,
        **overrides,
    ) -> ScanLoader:
        """The loader a model was trained with, from its lineage (the
        ``training`` object of its ``model.onnx.json``): the same store
        version, selection, seed, batch size and window, so the same
        ``image_id``s in the same order. ``overrides`` replace keywords
        (``rank``, ``prefetch``...; never the selection).

        Raises ValueError when the rows found differ from the recorded
        ``rows_sha256`` (the version was vacuumed away and rebuilt, say).
        """
        from xraycore.train.lineage import rows_sha256

        if not isinstance(training, dict) or "store_version" not in training:
            raise ValueError("training must be a model's lineage (its contract's 'training')")
        selection = dict(training.get("selection") or {})
        kwargs = {**(training.get("loader") or {}), "seed": training.get("seed", 0), **overrides}
        # A lineage read in row order (the baseline's) fixes no batch size: any gives that order.
        kwargs.setdefault("batch_size", 32)
        loader = cls(
            training["store"],
            version=training["store_version"],
            storage_options=storage_options,
            **selection,
            **kwargs,
        )
        found = rows_sha256(loader.image_ids.tolist())
        if found != training.get("rows_sha256"):
            raise ValueError(
                f"version {training['store_version']} of {training['store']} selects "
                f"{len(loader.image_ids)} rows whose rows_sha256 is {found}, not the "
                f"model's {training.get('rows_sha256')} ({training.get('rows')} rows)"
            )
        return loader

    # -- the selection ------------------------------------------------------
    def _select(self, *, split, target, targets, where) -> None:
        table = self._store.read_metadata()
        chosen = select_rows(
            table, url=self._store.storage.url, split=split, where=where, target=target
        )
        self.targets = self.target_mask = None
        self.target_names: tuple[str, ...] = ()
        if targets is not None:
            chosen = self._select_labels(chosen, targets, split=split, where=where)
        self.rows = chosen["row"].to_numpy().astype(np.int64)
        self.image_ids = np.array(chosen["image_id"].to_pylist(), dtype=str)
        if target is not None:
            self.targets = _targets(chosen[target], target)
        self._shards = self.rows // self.shard_size
        digest = hashlib.sha256()
        digest.update(self.rows.tobytes())
        digest.update("\0".join(self.image_ids.tolist()).encode())
        labels = self.targets is not None and self.targets.tobytes()
        mask = self.target_mask is not None and self.target_mask.tobytes()
        digest.update(repr((target, self.target_names, labels, mask)).encode())
        self.fingerprint = digest.hexdigest()[:16]
        self._cache_keys: dict[int, str] | None = None
        if self.tuning["cache_dir"] is not None:
            self._cache_keys = self._shard_cache_keys(table)

    def _select_labels(self, chosen, targets, *, split, where):
        """The rows of ``chosen`` with a counted label in one of ``targets``'
        columns; sets the targets, mask, names and counts."""
        import pyarrow as pa

        names = target_columns(targets, chosen.column_names)
        labels = label_matrix(chosen, names, uncertain=self.uncertain)
        keep = labels.mask.any(axis=1)
        if not keep.any():
            raise ValueError(
                f"no rows selected from store {self._store.storage.url} with a label in "
                f"{list(names)} (split={split!r}, where={where!r}, uncertain={self.uncertain!r})"
            )
        labels = LabelMatrix(names, labels.targets[keep], labels.mask[keep])
        self.target_names, self.targets, self.target_mask = names, labels.targets, labels.mask
        self.positives, self.negatives = labels.positives, labels.negatives
        return chosen.filter(pa.array(keep))

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
        self.consumed = 0

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
        return {"epoch": self.epoch, "batches": self.consumed, "rank": self.rank, **self._config()}

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
        self.consumed = batches

    # -- iterating ----------------------------------------------------------
    def start_iteration(self) -> int:
        """The batch an iteration starts from: :attr:`consumed`, or 0 (and the
        count reset) when the epoch was finished and goes round again."""
        if self.consumed >= len(self):
            self.consumed = 0
        return self.consumed

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        start = self.start_iteration()
        for batch in self.batches(self.epoch, start, 0, 1):
            self.consumed += 1
            yield batch

    def _runtime_for(self, workers: int) -> ReadRuntime:
        rt = self._runtime
        if rt is None or rt.pid != os.getpid():
            rt = self._runtime = ReadRuntime(
                self._store_here(), arrays=self.arrays, tuning=self.tuning, workers=workers
            )
        return rt

    def _store_here(self) -> ScanStore:
        if self._store_pid == os.getpid():
            return self._store
        # Forked or unpickled: a client of this process (fsspec#835).
        from xraycore.store.storage import Storage

        return ScanStore(Storage.from_url(*self._storage_args), self.version)

    def batches(
        self, epoch: int, start: int, worker: int, workers: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start + worker``, ``start + worker + workers``, ... of
        this rank's epoch ``epoch``, as iterating yields them (without counting
        them in :attr:`consumed`): what DataLoader worker ``worker`` of
        ``workers`` makes."""
        order = self._order(epoch)
        bounds = self._bounds()[start + worker :: workers]
        plan = [order[lo:hi] for lo, hi in bounds]
        if not plan:
            return
        selection = Selection(
            arrays=self.arrays,
            specs=self._specs,
            rows=self.rows,
            shards=self._shards,
            shard_size=self.shard_size,
            image_ids=self.image_ids,
            targets=self.targets,
            target_mask=self.target_mask,
            cache_keys=self._cache_keys,
        )
        runtime = self._runtime_for(workers)
        yield from read_batches(selection, runtime, plan, prefetch=self.tuning["prefetch"])

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


def lineage_image_ids(
    training: dict[str, Any] | None, *, storage_options: dict[str, Any] | None = None
) -> frozenset[str]:
    """The ``image_id``s a model's lineage names: the rows it was trained on and
    the validation rows that chose its epoch and thresholds.

    An evaluation never counts them as test rows (:func:`xraycore.predict.evaluation.
    evaluate_store`'s ``seen``), whatever their split column says now.

    Parameters
    ----------
    training : dict or None
        The ``training`` object of a model's contract; None (a model with no
        lineage) names no row.
    storage_options : dict, optional
        fsspec options for the lineage's store.

    Returns
    -------
    image_ids : frozenset of str

    Raises
    ------
    ValueError
        When the lineage's rows cannot be found again (:meth:`ScanLoader.from_lineage`).
    """
    if not training:
        return frozenset()
    found = set(ScanLoader.from_lineage(training, storage_options=storage_options).image_ids)
    validation = training.get("validation")
    if validation:  # its selection, rows and rows_sha256, at the training's version
        again = ScanLoader.from_lineage({**training, **validation}, storage_options=storage_options)
        found.update(again.image_ids)
    return frozenset(str(i) for i in found)


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
