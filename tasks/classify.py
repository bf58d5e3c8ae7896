"""Tasks of the classification flow; the logic lives in ``xraycore``."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.preprocess import on_cluster, transient
from xraycore.batch import classify_rows
from xraycore.store import ScanStore

__all__ = ["commit_predictions", "score_batch"]


def score_run_name(parameters: dict[str, Any]) -> str:
    """``score batch 3 (rows 192-255)``."""
    rows = [r for r, _ in parameters["items"]]
    if not rows:
        return "score batch (empty)"
    return f"score batch {parameters['batch']} (rows {min(rows)}-{max(rows)})"


@task(
    name="score-batch",
    task_run_name=score_run_name,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def score_batch(
    items: list[tuple[int, str]],
    batch: int,
    store: str,
    model: str,
    contract: dict | None,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    commit: bool = True,
    client: Any = None,
) -> dict[str, Any]:
    """Score one batch's (row, image_id) pairs (batch number ``batch`` of the
    store) and commit their predictions (a version), or with ``commit=False``
    write them as a file for the run's committer (the result's ``table_file``);
    reads pixels from the store, returns counts."""
    return on_cluster(
        client,
        classify_rows,
        items,
        store=store,
        model=model,
        contract=contract,
        run_id=run_id,
        storage_options=storage_options,
        commit=commit,
    )


@task(name="commit-predictions", retries=2, retry_delay_seconds=2, persist_result=False)
def commit_predictions(
    store: str, run_id: str, storage_options: dict[str, Any] | None = None
) -> int:
    """Commit the end of a classification: its predictions' files compacted."""
    return ScanStore.open(store, storage_options).finish_classification(run_id)
