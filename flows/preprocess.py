"""``preprocess_dataset``: a folder or bucket of scans -> a Zarr + Parquet store."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from flows.credentials import with_block_credentials
from flows.progress import notify
from flows.runner import DaskCluster, resolve_cluster
from tasks.classify import commit_predictions, score_shard
from tasks.preprocess import commit_metadata, preprocess_batch
from xraycore.batch import Plan, plan_batches
from xraycore.catalog import list_sources, read_labels
from xraycore.classify import ModelContract
from xraycore.evaluation import evaluate_store
from xraycore.lease import DEFAULT_TTL_S, LeaseInfo, StoreLease
from xraycore.pipeline import PipelineSpec
from xraycore.report import comparison_sheet, report_markdown
from xraycore.schema import SHEET
from xraycore.storage import Storage, refuse_credentials
from xraycore.store import ScanStore

SHEET_ROWS = 3


def load_spec(pipeline: str | dict | None, size: int | None) -> PipelineSpec:
    """The pipeline spec of a run: a file or mapping, with ``size`` on top."""
    if isinstance(pipeline, dict):
        base = dict(pipeline)
    elif pipeline:
        base = PipelineSpec.from_file(pipeline).to_dict()
    else:
        base = {}
    if size is not None:
        base["size"] = size
    return PipelineSpec.from_dict(base)


@flow(name="preprocess-dataset", log_prints=True)
def preprocess_dataset(
    source: str,
    store: str,
    labels: str | None = None,
    size: int | None = None,
    pipeline: str | dict | None = None,
    batch_size: int = 64,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    model: str | None = None,
    contract: dict | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    aws_credentials: str | None = None,
    sheet: bool = True,
    wait_for_lease: bool = False,
    break_lease: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
) -> dict[str, Any]:
    """List the source, plan shard-aligned batches, process them on a Dask
    cluster, commit the metadata and publish a summary.

    First the run takes the store's lease (:mod:`xraycore.lease`): a store held
    by another run is refused (a ``LeaseHeldError`` naming it) unless
    ``wait_for_lease``; ``break_lease`` removes a lease whose holder is known to
    be dead. The lease is renewed while the run lasts and released when it ends.

    The cluster starts while the source is listed and planned: ``scheduler``
    (an address), ``cluster_class`` + ``cluster_kwargs``, the spec named by
    ``cluster`` or ``XRAY_DASK_CLUSTER`` (``deploy/clusters``), else a
    LocalCluster of ``workers`` processes. With ``model`` (ONNX) each batch is
    scored as soon as it is committed. Credentials come from the environment, an
    AWS profile or the prefect-aws block named ``aws_credentials``, never from
    ``storage_options``.
    """
    refuse_credentials(storage_options, "storage_options")
    logger = get_run_logger()
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    spec = load_spec(pipeline, size)
    options = with_block_credentials(storage_options, aws_credentials)
    where = resolve_cluster(
        cluster=cluster,
        scheduler=scheduler,
        workers=workers,
        cluster_class=cluster_class,
        cluster_kwargs=cluster_kwargs,
    )
    target = ScanStore.open(store, options)
    # One writer per store: taken before planning (two runs would plan the same rows).
    lease = StoreLease.acquire(
        target.storage,
        run_id,
        ttl_s=lease_ttl_s,
        wait=wait_for_lease,
        break_existing=break_lease,
        description=f"flow run {_flow_run('name')!r}" if _flow_run("name") else "",
        on_wait=lambda held: _waiting_for(held, store, logger),
    )
    with lease:  # renewed while the run lasts, released however it ends
        if lease.taken_over:
            held, why = lease.taken_over
            logger.warning("took over the lease of run %s on %s: %s", held.run_id, store, why)
            notify("lease_taken_over", run_id=held.run_id, holder=held.holder, reason=why)
        target.initialise(spec, batch_size=batch_size, overwrite=overwrite)
        with DaskCluster(where) as dask_cluster:  # starts while we list and plan
            sources = list_sources(Storage.from_url(source, options))
            notify("listed", inputs=len(sources), seconds=time.perf_counter() - started)
            plan = plan_batches(
                sources,
                target.read_metadata(),
                pipeline_hash=spec.hash,
                first_free_row=target.capacity(),
                batch_size=batch_size,
                labels=read_labels(labels, options) if labels else None,
            )
            target.ensure_capacity(plan.end_row)
            images = sum(len(b.items) for b in plan.batches)
            logger.info(
                "%d inputs: %d new, %d to retry, %d already done; %d batches",
                len(sources),
                plan.new,
                plan.retried,
                plan.skipped,
                len(plan.batches),
            )
            notify(
                "planned",
                new=plan.new,
                retried=plan.retried,
                skipped=plan.skipped,
                batches=len(plan.batches),
                images=images,
            )
            contract_dict = None
            if model:
                contract_dict = ModelContract.for_model(
                    model, options, **(contract or {})
                ).to_dict()
            client = dask_cluster.client() if plan.batches else None
            dashboard = dask_cluster.dashboard_link if client else None
            if client is not None:
                workers_up = dask_cluster.workers
                logger.info("Dask cluster: %d workers, dashboard %s", workers_up, dashboard)
                notify("cluster", workers=workers_up, dashboard=dashboard)
            results, broken, scored = _process(
                plan,
                client,
                lease=lease,
                batch_size=batch_size,
                store=store,
                spec=spec,
                run_id=run_id,
                options=options,
                model=model,
                contract=contract_dict,
                logger=logger,
            )
        lease.check()  # a run that lost its lease (broken, taken over) must not compact
        rows = commit_metadata(store, run_id, options)
        target.remove_temporary_files()  # of killed writers: this run's batches are done
        notify("committed", rows=rows)
        emit_event(
            event="xray.run.committed",
            resource=store_resource(store),
            payload={"store": store, "run_id": run_id, "rows": rows},
        )
        report = None
        if model:
            commit_predictions(store, run_id, options)
            report = evaluate_store(
                target, model, ModelContract.from_dict(contract_dict), storage_options=options
            )
            logger.info("classified %d rows with %s", scored, model)
            notify("scored", rows=scored)
            if report is not None:
                create_markdown_artifact(
                    key="classification-report", markdown=report_markdown(report)
                )

        elapsed = time.perf_counter() - started
        ok = sum(r["ok"] for r in results)
        failed = sum(r["failed"] for r in results)
        summary = {
            "run_id": run_id,
            "flow_run": _flow_run("name"),
            "flow_run_id": _flow_run("id"),
            "store": store,
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
            "scored": scored,
            "sheet": None,
        }
        sample = sorted(row for r in results for row, _ in r["items"])[:SHEET_ROWS]
        if sheet and sample:
            summary["sheet"] = _write_sheet(target, sample, options, logger)
        if summary["failures"]:
            create_table_artifact(
                key="preprocess-failures",
                table=[{"image_id": i, "error": e} for i, e in summary["failures"]],
                description="Inputs that could not be processed (retried on the next run)",
            )
        create_markdown_artifact(
            key="preprocess-summary",
            markdown=summary_markdown(summary, target),
            description=f"preprocess_dataset into {store}",
        )
        if broken:
            raise RuntimeError(
                f"{len(broken)} batch(es) failed after retries (first: rows from {broken[0][0]}: "
                f"{broken[0][1]}); their inputs have no rows yet. Rerun the same command to resume."
            )
        return summary


def _waiting_for(held: LeaseInfo, store: str, logger) -> None:
    logger.info("waiting for run %s (%s) to release %s", held.run_id, held.holder, store)
    notify("waiting", run_id=held.run_id, holder=held.holder, since=held.acquired_at.isoformat())


def store_resource(store: str) -> dict[str, str]:
    """The Prefect event resource of a store."""
    return {"prefect.resource.id": f"xray.store.{store}", "prefect.resource.name": store}


def _process(
    plan: Plan, client, *, lease, batch_size, store, spec, run_id, options, model, contract, logger
) -> tuple[list[dict], list[tuple[int, str]], int]:
    """Run the batches in waves and collect them in completion order.

    At most a few batches per worker are in flight: results (progress, events,
    scoring) arrive as soon as the first batches finish, not after every batch
    of a large plan has been submitted. Each committed batch is announced (a
    Prefect event) and, with a model, scored on the same cluster.
    """
    total = sum(len(b.items) for b in plan.batches)
    progress = create_progress_artifact(
        progress=0.0,
        key="preprocess-progress",
        description=f"Images processed (% of {total}) into {store}",
    )
    workers = len(client.scheduler_info(n_workers=-1)["workers"]) if client else 1
    window = max(4, 2 * workers)
    waiting = list(reversed(plan.batches))
    running: dict[concurrent.futures.Future, Any] = {}
    scoring = []
    results, broken, done, t0, shown = [], [], 0, time.perf_counter(), 0.0

    def submit(batch) -> None:
        future = preprocess_batch.submit(
            batch,
            store=store,
            spec=spec.to_dict(),
            run_id=run_id,
            storage_options=options,
            source_options=options,
            client=client,
        )
        running[future.wrapped_future] = (future, batch)

    while waiting or running:
        while waiting and len(running) < window:
            lease.check()  # stop handing out rows once another run holds the store
            submit(waiting.pop())
        finished, _ = concurrent.futures.wait(
            list(running), return_when=concurrent.futures.FIRST_COMPLETED
        )
        for wrapped in finished:
            future, batch = running.pop(wrapped)
            try:
                result = future.result()
            except Exception as exc:  # a batch that failed after its retries
                broken.append((batch.start, f"{type(exc).__name__}: {exc}"))
                logger.error("batch from row %d failed after retries: %s", batch.start, exc)
            else:
                results.append(result)
                emit_event(
                    event="xray.batch.committed",
                    resource=store_resource(store),
                    payload={"store": store, "start": batch.start, "rows": result["rows"]},
                )
                if model and result["items"]:
                    scoring.append(
                        score_shard.submit(
                            result["items"],
                            shard=batch.start // batch_size,
                            store=store,
                            model=model,
                            contract=contract,
                            run_id=run_id,
                            storage_options=options,
                            client=client,
                        )
                    )
            done += len(batch.items)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            notify(
                "batch",
                done=done,
                total=total,
                failed=sum(r["failed"] for r in results),
                batches_done=len(results) + len(broken),
                batches=len(plan.batches),
                rate=done / elapsed,
            )
            if elapsed - shown >= 2.0 or done == total:  # at most one API call per 2 s
                shown = elapsed
                logger.info(
                    "progress: %d/%d images, %d/%d batches, %.1f images/s",
                    done,
                    total,
                    len(results) + len(broken),
                    len(plan.batches),
                    done / elapsed,
                )
                update_progress_artifact(progress, progress=100.0 * done / max(total, 1))
    scored = 0
    for future in scoring:
        try:
            scored += future.result()["rows"]
        except Exception as exc:  # unscored rows are picked up by the next scoring run
            logger.error("scoring failed: %s", exc)
    return results, broken, scored


def _flow_run(attribute: str) -> str | None:
    try:
        from prefect.runtime import flow_run

        value = getattr(flow_run, attribute)
        return str(value) if value else None
    except Exception:  # outside a flow run
        return None


def _write_sheet(target: ScanStore, rows: list[int], options, logger) -> str | None:
    """The comparison picture of a few rows of this run, next to the store."""
    import tempfile
    from pathlib import Path

    try:
        with tempfile.TemporaryDirectory() as tmp:
            png = comparison_sheet(target, rows, Path(tmp) / SHEET, source_options=options)
            target.storage.write_bytes_atomic(SHEET, png.read_bytes())
    except Exception as exc:  # a picture is a nicety: never fail a run for it
        logger.warning("comparison sheet not written: %s: %s", type(exc).__name__, exc)
        return None
    return target.storage.uri(SHEET)


def _thumbnail(target: ScanStore, width: int = 960) -> str | None:
    """The sheet as a data URI of a small JPEG, for the markdown artifact."""
    import cv2
    import numpy as np

    try:
        data = target.storage.read_bytes(SHEET)
    except FileNotFoundError:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    if image.shape[1] > width:
        height = round(image.shape[0] * width / image.shape[1])
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def summary_markdown(s: dict[str, Any], target: ScanStore | None = None) -> str:
    """The run's summary artifact: headed by the flow run's name, linking the store."""
    store = s["store"]
    link = store if "://" in store else f"file://{os.path.abspath(store)}"
    lines = [
        f"# Preprocessing run {s.get('flow_run') or s['run_id']}",
        "",
        f"Store: [{store}]({link}) (pipeline `{s['pipeline_hash']}`, "
        f"{s['rows_in_store']} rows; batch id `{s['run_id']}`)",
        "",
        "| inputs | ok | failed | skipped | batches | seconds | images/s |",
        "|---|---|---|---|---|---|---|",
        f"| {s['inputs']} | {s['ok']} | {s['failed']} | {s['skipped']} | {s['batches']} | "
        f"{s['seconds']:.1f} | {s['images_per_s']:.1f} |",
    ]
    if s.get("dashboard"):
        lines += ["", f"Dask dashboard (while the run's cluster was up): {s['dashboard']}"]
    if s.get("sheet") and target is not None:
        uri = _thumbnail(target)
        lines += ["", "## Sample of this run's outputs", ""]
        if uri:
            lines.append(f"![comparison sheet]({uri})")
        lines += ["", f"Full-size picture: `{s['sheet']}`"]
    if s["failures"]:
        lines += ["", "## Failed inputs", "", "| image | error |", "|---|---|"]
        lines += [f"| {i} | {e} |" for i, e in s["failures"][:200]]
    return "\n".join(lines)
