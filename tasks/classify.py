"""Batch tasks of the classification flow; the logic lives in ``xraycore``."""

from __future__ import annotations

from typing import Any

from prefect import task

from xraycore.batch import classify_rows
from xraycore.store import ScanStore


@task(name="classify-batch", retries=2, retry_delay_seconds=2, persist_result=False)
def classify_batch(
    items: list[tuple[int, str]],
    store: str,
    model: str,
    contract: dict | None,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one shard's (row, image_id) pairs; reads pixels from the store,
    returns counts."""
    return classify_rows(
        items,
        store=store,
        model=model,
        contract=contract,
        run_id=run_id,
        storage_options=storage_options,
    )


@task(name="commit-predictions", retries=2, retry_delay_seconds=2, persist_result=False)
def commit_predictions(
    store: str, run_id: str, storage_options: dict[str, Any] | None = None
) -> int:
    """Compact prediction parts: one row per (image, model)."""
    return ScanStore.open(store, storage_options).compact_predictions(run_id)
