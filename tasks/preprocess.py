"""Batch tasks of the preprocessing flow; the logic lives in ``xraycore``."""

from __future__ import annotations

from typing import Any

from prefect import task

from xraycore.batch import Batch
from xraycore.batch import process_batch as _process_batch
from xraycore.store import ScanStore


@task(name="process-batch", retries=2, retry_delay_seconds=2, persist_result=False)
def process_batch(
    batch: Batch,
    store: str,
    spec: dict,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read, process and store one shard of scans; returns counts, never pixels.

    Retries are safe: a batch rewrites its own whole shards and its own
    metadata part, so a retry replaces rather than appends.
    """
    return _process_batch(
        batch,
        store=store,
        spec=spec,
        run_id=run_id,
        storage_options=storage_options,
        source_options=source_options,
    )


@task(name="commit-metadata", retries=2, retry_delay_seconds=2, persist_result=False)
def commit_metadata(store: str, run_id: str, storage_options: dict[str, Any] | None = None) -> int:
    """Compact the run's metadata parts into one deduplicated Parquet file."""
    return ScanStore.open(store, storage_options).compact_metadata(run_id)
