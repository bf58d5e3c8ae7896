"""``preprocess_dataset``: a folder or bucket of scans -> a Zarr + Parquet store."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

from tasks.preprocess import commit_metadata, process_batch
from xraycore.batch import plan_batches
from xraycore.catalog import list_sources, read_labels
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


@flow(name="preprocess-dataset", log_prints=True)
def preprocess_dataset(
    source: str,
    out: str,
    labels: str | None = None,
    size: int | None = None,
    pipeline: str | dict | None = None,
    batch_size: int = 64,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """List the source, plan shard-aligned batches, process them on the task
    runner's Dask cluster, commit the metadata and publish a summary."""
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
        "%d inputs: %d to process in %d batches, %d already done",
        len(sources),
        len(sources) - plan.skipped,
        len(plan.batches),
        plan.skipped,
    )

    futures = process_batch.map(
        plan.batches,
        store_url=unmapped(out),
        spec=unmapped(spec.to_dict()),
        run_id=unmapped(run_id),
        storage_options=unmapped(storage_options),
        source_options=unmapped(storage_options),
    )
    wait(futures)
    results, broken = [], []
    for batch, fut in zip(plan.batches, futures, strict=True):
        state = fut.state
        if state.is_completed():
            results.append(fut.result())
        else:
            broken.append((batch.start, str(state.message)))
    rows = commit_metadata(out, run_id, storage_options)

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
    }
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
