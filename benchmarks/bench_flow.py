"""Images/s of the preprocessing flow (Prefect + DaskTaskRunner on a LocalCluster)
against a bare multiprocessing loop over the same kernel (xraycore.batch.process_batch)
on the same cores, same inputs, same batch size, measured in one run.

    .venv/bin/python benchmarks/bench_flow.py [--images 128] [--workers 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chestxray8"


def make_source(folder: Path, n: int) -> str:
    from xraycore.synth import phantom_chest

    real = sorted(SHARED.glob("*.png"))
    folder.mkdir(parents=True)
    for i in range(n):
        if real:
            shutil.copy(real[i % len(real)], folder / f"scan_{i:05d}.png")
        else:
            cv2.imwrite(str(folder / f"scan_{i:05d}.png"), phantom_chest(1024, seed=i))
    return "real ChestX-ray8 scans (repeated)" if real else "generated phantoms"


def bare_loop(source: str, out: str, workers: int, batch_size: int) -> float:
    from xraycore.batch import plan_batches, process_batch
    from xraycore.catalog import list_sources
    from xraycore.pipeline import PipelineSpec
    from xraycore.storage import Storage
    from xraycore.store import ScanStore

    start = time.perf_counter()
    spec = PipelineSpec()
    store = ScanStore.open(out)
    store.initialise(spec, shard_size=batch_size)
    plan = plan_batches(
        list_sources(Storage.from_url(source)),
        None,
        pipeline_hash=spec.hash,
        first_free_row=0,
        shard_size=batch_size,
    )
    store.ensure_capacity(plan.end_row)
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(
            partial(process_batch, store=out, spec=spec.to_dict(), run_id="bare"),
            plan.batches,
            chunksize=1,
        )
    store.compact_metadata("bare")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    from flows.runner import WORKER_MALLOC, prefect_api, task_runner

    # The same allocator settings for the bare loop's processes as for the flow's workers.
    os.environ.update(WORKER_MALLOC)

    with tempfile.TemporaryDirectory() as tmp:
        what = make_source(Path(tmp) / "src", args.images)
        src = str(Path(tmp) / "src")
        bare_s = bare_loop(src, str(Path(tmp) / "bare"), args.workers, args.batch_size)
        from flows.preprocess import preprocess_dataset

        with prefect_api():
            t = time.perf_counter()
            runner = task_runner(workers=args.workers)
            summary = preprocess_dataset.with_options(task_runner=runner)(
                source=src, out=str(Path(tmp) / "flow"), batch_size=args.batch_size
            )
            flow_s = time.perf_counter() - t
        assert summary["ok"] == args.images, summary
    n = args.images
    print(
        f"# {n} x 1024x1024 {what}, {args.workers} worker processes, batches of "
        f"{args.batch_size}, default pipeline, local store"
    )
    print(f"bare multiprocessing loop : {n / bare_s:6.1f} images/s ({bare_s:.1f} s)")
    print(
        f"flow (Prefect + Dask)     : {n / flow_s:6.1f} images/s ({flow_s:.1f} s, "
        f"cluster start included; Prefect API already up)"
    )
    print(f"flow / bare               : {bare_s / flow_s:6.2f}")


if __name__ == "__main__":
    main()
