"""Images/s of the preprocessing flow (Prefect flow, batches as plain Dask work on a
LocalCluster) against a bare multiprocessing loop over the same kernel
(xraycore.batch.process_batch) on the same cores, same inputs, same batch size,
measured in one run. Each side is reported as a whole (start to finish) and split
into a fixed cost and a steady-state rate:

- steady-state rate: images per second between the first and the last batch to
  finish (work only);
- fixed cost: the whole time minus what the images take at that rate (start of
  the processes or cluster, imports, listing, planning, the flow run's own
  bookkeeping, the commit).

    .venv/bin/python benchmarks/bench_flow.py [--images 512] [--workers 2] [--batch-size 32]
        [--repeat 3]

With ``--repeat N`` the two sides alternate N times (on a shared machine the load
of other jobs moves both); the figures are the medians, and the ratio is taken
pair by pair.
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
    from xraycore.image.synth import phantom_chest

    real = sorted(SHARED.glob("*.png"))
    folder.mkdir(parents=True)
    for i in range(n):
        if real:
            shutil.copy(real[i % len(real)], folder / f"scan_{i:05d}.png")
        else:
            cv2.imwrite(str(folder / f"scan_{i:05d}.png"), phantom_chest(1024, seed=i))
    return "real ChestX-ray8 scans (repeated)" if real else "generated phantoms"


def split(total_s: float, marks: list[tuple[float, int]], images: int) -> tuple[float, float]:
    """(fixed cost in s, steady-state images/s) from (seconds since start, images
    done) at each finished batch."""
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    if t_last <= t_first:
        return total_s, images / total_s
    rate = (n_last - n_first) / (t_last - t_first)
    return total_s - images / rate, rate


def bare_loop(source: str, out: str, workers: int, batch_size: int):
    from xraycore.batch import plan_batches, process_batch
    from xraycore.image.pipeline import PipelineSpec
    from xraycore.sources.catalog import list_sources
    from xraycore.store import ScanStore
    from xraycore.store.storage import Storage

    start = time.perf_counter()
    spec = PipelineSpec()
    store = ScanStore.open(out)
    store.initialise(spec, batch_size=batch_size)
    plan = plan_batches(
        list_sources(Storage.from_url(source)),
        None,
        pipeline_hash=spec.hash,
        first_free_row=0,
        batch_size=batch_size,
    )
    store.ensure_capacity(plan.end_row)
    marks, done = [], 0
    with mp.get_context("spawn").Pool(workers) as pool:
        work = partial(process_batch, store=out, spec=spec.to_dict(), run_id="bare")
        for result in pool.imap_unordered(work, plan.batches, chunksize=1):
            done += result["ok"] + result["failed"]
            marks.append((time.perf_counter() - start, done))
    store.finish_run("bare")
    return time.perf_counter() - start, marks


def flow_run(source: str, out: str, workers: int, batch_size: int):
    from flows.cluster import local_cluster
    from flows.preprocess import preprocess_dataset
    from flows.progress import observe

    marks = []
    phases = {}
    start = time.perf_counter()

    def observer(event, fields):
        now = time.perf_counter() - start
        phases.setdefault(event, now)
        if event == "batch":
            marks.append((now, fields["done"]))

    with observe(observer):
        summary = preprocess_dataset(
            source=source,
            store=out,
            batch_size=batch_size,
            cluster=local_cluster(workers),
            sheet=False,
        )
    return time.perf_counter() - start, marks, phases, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from flows.cluster import WORKER_MALLOC
    from flows.server import prefect_api

    # The same allocator settings for the bare loop's processes as for the flow's workers.
    os.environ.update(WORKER_MALLOC)
    n = args.images
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        what = make_source(Path(tmp) / "src", n)
        src = str(Path(tmp) / "src")
        with prefect_api():
            for i in range(args.repeat):
                bare = bare_loop(src, str(Path(tmp) / f"bare{i}"), args.workers, args.batch_size)
                flow = flow_run(src, str(Path(tmp) / f"flow{i}"), args.workers, args.batch_size)
                assert flow[3]["ok"] == n, flow[3]
                pairs.append((bare, flow))
    pairs.sort(key=lambda p: p[0][0] / p[1][0])
    (bare_s, bare_marks), (flow_s, flow_marks, phases, _) = pairs[len(pairs) // 2]
    ratios = [b[0] / f[0] for b, f in pairs]
    bare_fixed, bare_rate = split(bare_s, bare_marks, n)
    flow_fixed, flow_rate = split(flow_s, flow_marks, n)
    print(
        f"# {n} x 1024x1024 {what}, {args.workers} worker processes, batches of "
        f"{args.batch_size}, default pipeline, local store"
    )
    if len(pairs) > 1:
        print("# the median pair (by flow/bare ratio):")
    print(f"{'':26}{'images/s':>9}{'total s':>9}{'fixed s':>9}{'steady images/s':>17}")
    print(f"{'bare multiprocessing loop':26}{n / bare_s:9.1f}{bare_s:9.1f}{bare_fixed:9.1f}"
          f"{bare_rate:17.1f}")  # fmt: skip
    print(f"{'flow (Prefect + Dask)':26}{n / flow_s:9.1f}{flow_s:9.1f}{flow_fixed:9.1f}"
          f"{flow_rate:17.1f}")  # fmt: skip
    print(f"bare loop: first batch done {bare_marks[0][0]:.1f} s from the start")
    print(
        "flow phases (s from the call): "
        + ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if k != "batch")
        + f", first batch {flow_marks[0][0]:.1f}"
    )
    print(
        f"flow / bare (whole run)   : {bare_s / flow_s:6.2f}"
        + (f"  (median of {len(ratios)} pairs: {', '.join(f'{r:.2f}' for r in ratios)})"
           if len(ratios) > 1 else "")
    )  # fmt: skip
    print(f"flow / bare (steady state): {flow_rate / bare_rate:6.2f}")
    print("(Prefect API already up for the flow: its start is not counted)")


if __name__ == "__main__":
    main()
