"""``classify_store``: score the rows of a store that a model has not scored yet."""

from __future__ import annotations

import json
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.credentials import with_block_credentials
from flows.progress import notify
from flows.runner import DaskCluster, resolve_cluster
from tasks.classify import commit_predictions, score_shard
from xraycore.classify import ModelContract
from xraycore.evaluation import REPORT, evaluate_store, model_sha256
from xraycore.report import report_markdown
from xraycore.scoring import shard_groups, unscored_rows
from xraycore.storage import refuse_credentials
from xraycore.store import ScanStore

# Scoring tasks in flight at once when no Dask cluster is asked for: a shard's
# ONNX session uses one thread, so a few overlap reading with scoring.
SCORING_THREADS = 4


@flow(name="classify-store", log_prints=True, task_runner=ThreadPoolTaskRunner(SCORING_THREADS))
def classify_store(
    store: str,
    model: str,
    contract: dict | None = None,
    target: str | None = None,
    rows: list[int] | str | None = None,
    storage_options: dict[str, Any] | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    aws_credentials: str | None = None,
) -> dict[str, Any]:
    """Score the ok rows of ``store`` (or of ``rows``) that have no prediction
    for this model's SHA-256, in whole shards; commit the predictions once and
    write the evaluation report when the metadata holds the target labels.

    Incremental and idempotent: a second run with nothing new scores nothing,
    so any number of triggers converge on one prediction per row. Scoring runs
    in this process unless ``cluster``, ``scheduler`` or ``workers`` ask for a
    Dask cluster. ``rows`` may be JSON text, as an event trigger renders a list.
    """
    refuse_credentials(storage_options, "storage_options")
    if isinstance(rows, str):
        rows = [int(r) for r in json.loads(rows)] if rows.strip() else None
    logger = get_run_logger()
    run_id = uuid.uuid4().hex[:12]
    options = with_block_credentials(storage_options, aws_credentials)
    target_store = ScanStore.open(store, options)
    info = target_store.info()
    if info is None:
        raise ValueError(f"{store} is not a store (no images.zarr)")
    c = ModelContract.for_model(model, options, **(contract or {}))
    sha = model_sha256(model, options)
    # One task per batch of the store (a whole number of its Zarr shards): a few
    # thousand task runs for ChestX-ray8, not one per 16-image shard.
    shard_size = int(info.get("batch_size") or info["shard_size"])
    groups = shard_groups(unscored_rows(target_store, sha, rows=rows), shard_size)
    todo = sum(len(g) for g in groups)
    logger.info(
        "%d rows have no prediction from %s (sha256 %s): %d shards",
        todo,
        model,
        sha[:12],
        len(groups),
    )
    notify("planned", new=todo, retried=0, skipped=0, batches=len(groups), images=todo)
    scored = 0
    if groups:
        wants_dask = bool(cluster or scheduler or workers)
        dask_cluster = (
            DaskCluster(resolve_cluster(cluster=cluster, scheduler=scheduler, workers=workers))
            if wants_dask
            else None
        )
        try:
            client = dask_cluster.client() if dask_cluster else None
            futures = [
                score_shard.submit(
                    g,
                    shard=g[0][0] // shard_size,
                    store=store,
                    model=model,
                    contract=c.to_dict(),
                    run_id=run_id,
                    storage_options=options,
                    client=client,
                )
                for g in groups
            ]
            for f in futures:
                scored += f.result()["rows"]
                notify("batch", done=scored, total=todo, failed=0, batches_done=0, batches=0)
        finally:
            if dask_cluster:
                dask_cluster.close()
        commit_predictions(store, run_id, options)
    report = None
    if scored or not target_store.storage.exists(REPORT):  # unchanged predictions: same report
        report = evaluate_store(target_store, model, c, target=target, storage_options=options)
    if report is not None:
        create_markdown_artifact(
            key="classification-report",
            markdown=report_markdown(report),
            description=f"{model} on {store}",
        )
    notify("scored", rows=scored)
    return {"run_id": run_id, "scored": scored, "shards": len(groups), "report": report}
