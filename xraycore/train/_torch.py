"""The torch side of :class:`xraycore.train.loader.ScanLoader` (imported on demand only)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["ScanBatches", "counting_dataloader"]


def _tensors(batch: dict) -> dict:
    return {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else v
        for k, v in batch.items()
    }


class ScanBatches(IterableDataset):
    """A loader's batches as tensors; DataLoader worker ``k`` of ``K`` makes
    batches ``k, k + K, ...`` from where the loader stands, so the DataLoader's
    round robin over its workers yields the loader's own order."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        loader = self.loader
        return len(loader) - (loader.consumed if loader.consumed < len(loader) else 0)

    def __iter__(self):
        loader = self.loader
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        start = loader.consumed if loader.consumed < len(loader) else 0
        for batch in loader.batches(loader.epoch, start, worker, workers):
            yield _tensors(batch)


class _CountingDataLoader(DataLoader):
    """A DataLoader whose iteration, in the main process, counts the batches
    it yields into its ScanLoader (for ``state_dict``)."""

    def __init__(self, loader, **kwargs):
        super().__init__(ScanBatches(loader), batch_size=None, **kwargs)
        self.scan_loader = loader

    def __iter__(self):
        loader = self.scan_loader
        # A finished epoch starts again before the workers copy the loader.
        loader.start_iteration()
        for batch in super().__iter__():
            loader.consumed += 1
            yield batch


def worker_context(num_workers: int, kwargs: dict) -> dict:
    """``kwargs`` for a DataLoader of ``num_workers`` workers, with a fork server
    as the workers' start method when this process has run a Prefect flow.

    Workers forked from a process that ran a Prefect 3.8 flow exit with code 1
    as they finish (torch 2.13 then raises "DataLoader worker exited
    unexpectedly"; seen in this project's test suite, cause inside Prefect's
    fork handling not found); a fork server starts them from a clean process.
    A ``multiprocessing_context`` the caller gives is kept.
    """
    import sys

    if num_workers and "multiprocessing_context" not in kwargs:
        if "prefect.flow_engine" in sys.modules:
            kwargs = {**kwargs, "multiprocessing_context": "forkserver"}
    return kwargs


def counting_dataloader(loader, *, num_workers: int = 0, **kwargs) -> DataLoader:
    if "batch_size" in kwargs:
        raise ValueError("batch_size is the ScanLoader's; do not give it to dataloader()")
    if kwargs.get("persistent_workers"):
        raise ValueError(
            "persistent_workers=True would keep the workers' copy of the loader's "
            "position from the first epoch; leave it off"
        )
    kwargs = worker_context(num_workers, kwargs)
    return _CountingDataLoader(loader, num_workers=num_workers, **kwargs)
