"""Tasks of the classification flow; the logic lives in ``xraycore``."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.preprocess import on_cluster
from xraycore.batch import classify_rows
from xraycore.store import ScanStore

__all__ = ["commit_predictions", "score_shard"]


def shard_run_name(parameters: dict[str, Any]) -> str:
    """``score shard 3 (rows 192-255)``."""
    rows = [r for r, _ in parameters["items"]]
    if not rows:
        return "score shard (empty)"
    return f"score shard {parameters['shard']} (rows {min(rows)}-{max(rows)})"


@task(
    name="score-shard",
    task_run_name=shard_run_name,
    retries=2,
    retry_delay_seconds=2,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def score_shard(
    items: list[tuple[int, str]],
    shard: int,
    store: str,
    model: str,
    contract: dict | None,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Score one shard's (row, image_id) pairs and commit them as one
    predictions part; reads pixels from the store, returns counts."""
    return on_cluster(
        client,
        classify_rows,
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
    """Compact prediction parts: one row per (image, model), one file."""
    return ScanStore.open(store, storage_options).compact_predictions(run_id)
