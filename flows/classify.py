"""``classify_store``: score the rows of a store that a model has not scored yet."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.cluster import DaskCluster, resolve_cluster
from flows.commits import GroupCommits
from flows.credentials import with_block_credentials
from flows.dispatch import in_waves
from flows.progress import notify
from tasks.classify import commit_predictions, score_batch
from xraycore.predict.contract import ModelContract
from xraycore.predict.evaluation import REPORT, REPORT_FORMAT, evaluate_store, model_sha256
from xraycore.predict.report import report_markdown
from xraycore.predict.scoring import batch_groups, rescored_images, unscored_rows
from xraycore.store import ScanStore
from xraycore.store.schema import IMAGES

__all__ = ["SCORING_THREADS", "classify_store", "evaluation_report"]

# Scoring tasks in flight at once when no Dask cluster is asked for: a batch's
# ONNX session uses one thread, so a few overlap reading with scoring.
SCORING_THREADS = 4


@flow(name="classify-store", log_prints=True, task_runner=ThreadPoolTaskRunner(SCORING_THREADS))
def classify_store(
    store: str,
    model: str,
    contract: dict | None = None,
    target: str | None = None,
    rows: list[int] | str | None = None,
    where: dict[str, Any] | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
    cluster: str | dict[str, Any] | None = None,
    aws_credentials: str | None = None,
) -> dict[str, Any]:
    """Score the ok rows of ``store`` (or of ``rows``) that have no prediction
    for this model's SHA-256, in whole batches of the store; commit the
    predictions once and write the evaluation report when the metadata holds
    the target labels.

    Incremental and idempotent: a second run with nothing new scores nothing,
    so any number of triggers converge on one prediction per row. Scoring runs
    in this process unless ``cluster`` asks for a Dask cluster (an address, a
    spec name or path, or a mapping: see ``preprocess_dataset``). ``rows`` may be
    JSON text, as an event trigger renders a list. ``where`` keeps the rows whose
    columns hold these values (a list: any of them), e.g. the frontal views
    ``{"view_position": ["PA", "AP"]}``.

    The report gives each split's figures, the test split's first (never counting
    a row the model was trained or validated on as a test row); ``split`` reports
    on that split alone.
    """
    rows = _row_list(rows)
    run_id = uuid.uuid4().hex[:12]
    options = with_block_credentials(storage_options, aws_credentials)
    target_store, info = _open_store(store, options)
    c = ModelContract.for_model(model, options, **(contract or {}))
    sha = model_sha256(model, options)
    batch_size, groups = _plan(target_store, info, sha, rows, where)
    scored = 0
    if groups:
        target_store.open_classification(run_id)
        again = set(rescored_images(target_store, sha, [i for g in groups for i in g]))
        commits = GroupCommits(
            lambda files, group, replacing: target_store.commit_prediction_files(
                files, run_id=run_id, group=group, replacing=replacing
            )
        )
        task = dict(store=store, model=model, contract=c.to_dict(), run_id=run_id)
        try:
            scored = _score(
                groups, batch_size, commits, again, cluster=cluster, storage_options=options, **task
            )
        finally:
            commits.flush()  # what was scored before a failure is kept
        commit_predictions(store, run_id, options)
    report = None
    if scored or _report_due(target_store, model, split):  # unchanged predictions: same report
        report = evaluation_report(
            target_store, model, c, target=target, split=split, options=options
        )
    notify("scored", rows=scored)
    return {"run_id": run_id, "scored": scored, "batches": len(groups), "report": report}


def _row_list(rows: list[int] | str | None) -> list[int] | None:
    """``rows`` as a list: an event trigger renders a list as JSON text."""
    if isinstance(rows, str):
        return [int(r) for r in json.loads(rows)] if rows.strip() else None
    return rows


def _open_store(store: str, options: dict[str, Any] | None) -> tuple[ScanStore, dict]:
    """The store and its attributes; a ValueError when there is no store."""
    target_store = ScanStore.open(store, options)
    info = target_store.info()
    if info is None:
        raise ValueError(f"{store} is not a store (no {IMAGES})")
    return target_store, info


def _plan(
    target_store: ScanStore, info: dict, sha: str, rows: list[int] | None, where: dict | None
) -> tuple[int, list[list[tuple[int, str]]]]:
    """The store's batch size and the groups of rows the model has not scored."""
    # One task per batch of the store (a whole number of its Zarr shards): a few
    # thousand task runs for ChestX-ray8, not one per 16-image shard.
    batch_size = int(info.get("batch_size") or info["shard_size"])
    groups = batch_groups(unscored_rows(target_store, sha, rows=rows, where=where), batch_size)
    todo = sum(len(g) for g in groups)
    notify("planned", new=todo, retried=0, skipped=0, batches=len(groups), images=todo)
    return batch_size, groups


def _score(
    groups: list, batch_size: int, commits: GroupCommits, again: set[str], *, cluster, **task: Any
) -> int:
    """Score ``groups`` in waves (a few per worker in flight), here or on the Dask
    cluster ``cluster`` names, the prediction files committed in groups by
    ``commits`` (merged on the image ids in ``again``); the rows scored. A batch
    that failed after its retries fails the run, and nothing more is handed out."""
    dask_cluster = DaskCluster(resolve_cluster(cluster)) if cluster else None
    try:
        client = dask_cluster.client() if dask_cluster else None
        workers = dask_cluster.workers if dask_cluster else 1

        def submit(group):
            batch = group[0][0] // batch_size
            return score_batch.submit(group, batch=batch, commit=False, client=client, **task)

        todo, scored, started = sum(len(g) for g in groups), 0, time.perf_counter()
        waves = in_waves(groups, submit, window=max(SCORING_THREADS, 2 * workers))
        for done, (group, result, error) in enumerate(waves, 1):
            if error is not None:
                raise error
            replacing = tuple(i for _, i in group if i in again)
            commits.add(None, result["table_file"], replacing)
            if commits.due():
                commits.flush()
            scored += result["rows"]
            notify(
                "batch",
                done=scored,
                total=todo,
                failed=0,
                batches_done=done,
                batches=len(groups),
                rate=scored / max(time.perf_counter() - started, 1e-9),
            )
        return scored
    finally:
        if dask_cluster:
            dask_cluster.close()


def _report_due(target_store: ScanStore, model: str, split: str | None) -> bool:
    """Whether the report must be written again though no row was scored: there is
    none, or it is of another model, another split or an older format."""
    if not target_store.storage.exists(REPORT):
        return True
    old = json.loads(target_store.storage.read_bytes(REPORT))
    asked = (old.get("format"), old.get("model"), old.get("asked_split"))
    return asked != (REPORT_FORMAT, model, split)


def evaluation_report(
    target_store: ScanStore,
    model: str,
    contract: ModelContract,
    *,
    target: str | None = None,
    split: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict | None:
    """The evaluation report (and its Prefect artifact) when the metadata holds the
    target labels, split by split; the rows of the model's training lineage are
    never counted as test rows. None, with a warning, when that lineage's rows
    cannot be found again (its store version vacuumed, say)."""
    from xraycore.train.loader import lineage_image_ids

    try:
        seen = lineage_image_ids(contract.training, storage_options=options)
    except (ValueError, OSError) as exc:
        get_run_logger().warning(
            "no classification report: the rows %s was trained on cannot be read again, so "
            "its test rows cannot be told apart (%s)",
            model,
            exc,
        )
        return None
    report = evaluate_store(
        target_store,
        model,
        contract,
        target=target,
        split=split,
        seen=seen,
        storage_options=options,
    )
    if report is not None:
        create_markdown_artifact(
            key="classification-report",
            markdown=report_markdown(report),
            description=f"{model} on {target_store.storage.url}",
        )
    return report
