"""``preprocess_dataset``: a folder or bucket of scans -> a Zarr + Parquet store."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.futures import as_completed

from flows.classify import evaluate_store, report_markdown
from flows.runner import task_runner
from tasks.classify import classify_batch, commit_predictions
from tasks.preprocess import commit_metadata, process_batch
from xraycore.batch import plan_batches
from xraycore.catalog import list_sources, read_labels
from xraycore.classify import ModelContract
from xraycore.pipeline import PipelineSpec
from xraycore.storage import Storage
from xraycore.store import ScanStore


def load_spec(pipeline: str | dict | None, size: int | None) -> PipelineSpec:
    if isinstance(pipeline, dict):
        base = dict(pipeline)
    elif pipeline:
        base = PipelineSpec.from_file(pipeline).to_dict()
    else:
        base = {}
    if size is not None:
        base["size"] = size
    return PipelineSpec.from_dict(base)


@flow(name="preprocess-dataset", log_prints=True, task_runner=task_runner())
def preprocess_dataset(
    source: str,
    out: str,
    labels: str | None = None,
    size: int | None = None,
    pipeline: str | dict | None = None,
    batch_size: int = 64,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    classify: str | None = None,
    classify_contract: dict | None = None,
) -> dict[str, Any]:
    """List the source, plan shard-aligned batches, process them on the task
    runner's Dask cluster, commit the metadata and publish a summary.

    The default task runner is the Dask cluster named by ``XRAY_DASK_CLUSTER``
    (a spec in ``deploy/clusters`` or a YAML path), else a LocalCluster; the CLI
    and :mod:`flows.runner` override it per run."""
    logger = get_run_logger()
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    spec = load_spec(pipeline, size)
    store = ScanStore.open(out, storage_options)
    store.initialise(spec, shard_size=batch_size, overwrite=overwrite)

    sources = list_sources(Storage.from_url(source, storage_options))
    label_map = read_labels(labels, storage_options) if labels else None
    plan = plan_batches(
        sources,
        store.read_metadata(),
        pipeline_hash=spec.hash,
        first_free_row=store.capacity(),
        shard_size=batch_size,
        labels=label_map,
    )
    store.ensure_capacity(plan.end_row)
    logger.info(
        "%d inputs: %d new, %d to retry, %d already done; %d batches",
        len(sources),
        plan.new,
        plan.retried,
        plan.skipped,
        len(plan.batches),
    )

    futures = process_batch.map(
        plan.batches,
        store=unmapped(out),
        spec=unmapped(spec.to_dict()),
        run_id=unmapped(run_id),
        storage_options=unmapped(storage_options),
        source_options=unmapped(storage_options),
    )
    dashboard = _dashboard_link()
    if dashboard:
        logger.info("Dask dashboard: %s", dashboard)
    scorer, contract = None, None
    if classify:
        contract = ModelContract.for_model(classify, storage_options, **(classify_contract or {}))
        # A batch's rows are scored as soon as they are committed, on the same cluster.
        scorer = partial(
            classify_batch.submit,
            store=out,
            model=classify,
            contract=contract.to_dict(),
            run_id=run_id,
            storage_options=storage_options,
        )

    results, broken, scoring = _collect(futures, plan, logger, out, scorer)
    rows = commit_metadata(out, run_id, storage_options)
    emit_event(
        event="xray.run.committed",
        resource=_resource(out),
        payload={"store": out, "run_id": run_id, "rows": rows},
    )
    report = None
    if classify:
        scored = sum(f.result()["rows"] for f in scoring)
        commit_predictions(out, run_id, storage_options)
        report = evaluate_store(store, classify, contract, storage_options=storage_options)
        logger.info("classified %d rows with %s", scored, classify)
        if report is not None:
            create_markdown_artifact(key="classification-report", markdown=report_markdown(report))

    elapsed = time.perf_counter() - started
    ok = sum(r["ok"] for r in results)
    failed = sum(r["failed"] for r in results)
    summary = {
        "run_id": run_id,
        "store": out,
        "pipeline_hash": spec.hash,
        "inputs": len(sources),
        "ok": ok,
        "failed": failed,
        "skipped": plan.skipped,
        "batches": len(plan.batches),
        "broken_batches": broken,
        "rows_in_store": rows,
        "seconds": elapsed,
        "images_per_s": (ok + failed) / elapsed if elapsed > 0 else 0.0,
        "failures": [f for r in results for f in r["failures"]],
        "dashboard": dashboard,
        "report": report,
    }
    if summary["failures"]:
        create_table_artifact(
            key="preprocess-failures",
            table=[{"image_id": i, "error": e} for i, e in summary["failures"]],
            description="Inputs that could not be processed (retried on the next run)",
        )
    create_markdown_artifact(
        key="preprocess-summary",
        markdown=_summary_markdown(summary),
        description=f"preprocess_dataset into {out}",
    )
    if broken:
        raise RuntimeError(
            f"{len(broken)} batch(es) failed after retries (first: rows from {broken[0][0]}: "
            f"{broken[0][1]}); their inputs have no rows yet. Rerun the same command to resume."
        )
    return summary


def _resource(store: str) -> dict[str, str]:
    return {"prefect.resource.id": f"xray.store.{store}", "prefect.resource.name": store}


def _collect(futures, plan, logger, store, scorer=None):
    """Wait for the batches in completion order, reporting progress, announcing
    each committed batch (a Prefect event) and handing its rows to ``scorer``."""
    total = sum(len(b.items) for b in plan.batches)
    progress = create_progress_artifact(progress=0.0, description="images processed (%)")
    by_future = {id(f): b for f, b in zip(futures, plan.batches, strict=True)}
    results, broken, scoring, done, t0 = [], [], [], 0, time.perf_counter()
    for fut in as_completed(futures):
        batch = by_future[id(fut)]
        try:
            result = fut.result()
        except Exception as exc:  # a batch that failed after its retries
            broken.append((batch.start, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(result)
            emit_event(
                event="xray.batch.committed",
                resource=_resource(store),
                payload={"store": store, "start": batch.start, "rows": result["rows"]},
            )
            if scorer is not None and result["rows"]:
                scoring.append(scorer(result["items"]))
        done += len(batch.items)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        logger.info(
            "progress: %d/%d batches, %d/%d images, %.1f images/s",
            len(results) + len(broken),
            len(plan.batches),
            done,
            total,
            rate,
        )
        update_progress_artifact(progress, progress=100.0 * done / max(total, 1))
    return results, broken, scoring


def _dashboard_link() -> str | None:
    try:
        from prefect.context import FlowRunContext

        client = FlowRunContext.get().task_runner.client
        return client.dashboard_link
    except Exception:  # no Dask runner (tests, a plain call): no dashboard
        return None


def _summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Preprocessing run {s['run_id']}",
        "",
        "| ok | failed | skipped | batches | images/s | store |",
        "|---|---|---|---|---|---|",
        f"| {s['ok']} | {s['failed']} | {s['skipped']} | {s['batches']} | "
        f"{s['images_per_s']:.1f} | `{s['store']}` |",
    ]
    if s["failures"]:
        lines += ["", "## Failed inputs", "", "| image | error |", "|---|---|"]
        lines += [f"| {i} | {e} |" for i, e in s["failures"][:200]]
    return "\n".join(lines)
