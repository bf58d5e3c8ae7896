"""The store's write and read sides, per scan, in one run on the same scans.

Write side, on ``--workers`` processes (one per core), batches of
``--batch-size``:
- limit: decode + ``run_pipeline`` alone (no store), the kernels' speed;
- bare loop: ``xraycore.batch.process_batch`` per batch (decode, kernels,
  packing, compression, Zarr + Parquet writes), with each worker's peak RSS;
- bytes per scan in the store, per array, and the default / preprocessed-only
  totals.
Read side, one process, random order: ``ScanDataset`` items per second from
the local store and through a moto S3 server on loopback.

    .venv/bin/python benchmarks/bench_store.py [--images 512] [--workers 2] [--batch-size 64]

Ratios are measured in one run, so they hold on a busy machine better than the
absolute rates do. (The flow against this bare loop is ``bench_flow.py``.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from bench_flow import make_source  # the same 512 scans as the flow benchmark

from flows.cluster import WORKER_MALLOC

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import free_port  # noqa: E402


def _limit_chunk(paths: list[str]) -> tuple[int, float]:
    from xraycore.image.decode import decode_image
    from xraycore.image.pipeline import PipelineSpec, run_pipeline

    cv2.setNumThreads(1)
    spec = PipelineSpec()
    cpu = time.process_time()
    for p in paths:
        run_pipeline(decode_image(Path(p).read_bytes()), spec)
    return len(paths), time.process_time() - cpu


def _bare_batch(args) -> tuple[int, float, int]:
    from xraycore.batch import process_batch

    batch, out, spec = args
    cpu = time.process_time()  # all threads of the worker: the writer's too
    result = process_batch(batch, store=out, spec=spec, run_id="bench")
    # ru_maxrss is in KiB on Linux: the worker's peak resident set so far.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result["ok"], time.process_time() - cpu, peak


def _warm(path: str) -> None:
    import pyarrow.parquet  # noqa: F401
    import zarr  # noqa: F401

    import xraycore.batch  # noqa: F401

    _limit_chunk([path])  # first calls of OpenCV and NumPy kernels


def _pool(workers: int, sample: Path):
    # As flows/cluster.py sets for LocalCluster workers (see MEASUREMENTS.md).
    os.environ.update(WORKER_MALLOC)  # inherited by the spawned workers
    pool = mp.get_context("spawn").Pool(workers)
    pool.map(_warm, [str(sample)] * workers)  # imports are a fixed cost, not a per-scan one
    return pool


def limit(pool, source: Path, batch_size: int) -> tuple[float, float]:
    """Scans/s and CPU s per scan of decode + run_pipeline on the pool."""
    paths = sorted(str(p) for p in source.glob("*.png"))
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    t0 = time.perf_counter()
    results = pool.map(_limit_chunk, chunks, chunksize=1)
    done = sum(n for n, _ in results)
    return done / (time.perf_counter() - t0), sum(c for _, c in results) / done


def bare(pool, source: Path, out: str, batch_size: int, outputs=None):
    """Scans/s, CPU s per scan and the peak worker RSS of the bare batch loop."""
    from xraycore.batch import plan_batches
    from xraycore.image.pipeline import PipelineSpec
    from xraycore.sources.catalog import list_sources
    from xraycore.store import ScanStore
    from xraycore.store.storage import Storage

    spec = PipelineSpec() if outputs is None else PipelineSpec(outputs=outputs)
    store = ScanStore.open(out)
    store.initialise(spec, batch_size=batch_size)
    plan = plan_batches(
        list_sources(Storage.from_url(str(source))),
        None,
        pipeline_hash=spec.hash,
        first_free_row=0,
        batch_size=batch_size,
    )
    store.ensure_capacity(plan.end_row)
    t0 = time.perf_counter()
    results = pool.map(_bare_batch, [(b, out, spec.to_dict()) for b in plan.batches], 1)
    done = sum(ok for ok, _, _ in results)
    rate = done / (time.perf_counter() - t0)
    store.finish_run("bench")
    return rate, sum(c for _, c, _ in results) / done, max(rss for _, _, rss in results)


def bytes_per_array(out: Path, n: int) -> dict[str, float]:
    sizes = {}
    for array in sorted((out / "images.zarr").iterdir()):
        if array.is_dir():
            total = sum(f.stat().st_size for f in array.rglob("*") if f.is_file())
            sizes[array.name] = total / n
    return sizes


def read_rate(url: str, seconds: float, storage_options=None) -> float:
    from xraycore.train.baseline import ScanDataset

    ds = ScanDataset(url, storage_options=storage_options)
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    ds[order[0]]  # open the arrays once, as a DataLoader worker would
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds[order[n % len(order)]]
        n += 1
    return n / (time.perf_counter() - t0)


def s3_read_rate(local_store: Path, seconds: float) -> float | None:
    """Upload the store to a moto S3 server (its own process) and read it back."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        return None
    port = free_port()
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import s3fs

        endpoint = f"http://127.0.0.1:{port}"
        opts = {"key": "bench", "secret": "bench", "endpoint_url": endpoint}
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        fs = s3fs.S3FileSystem(**opts)
        for _ in range(100):
            try:
                fs.mkdir("bench")
                break
            except Exception:
                time.sleep(0.1)
        fs.put(str(local_store), "bench/store", recursive=True)
        return read_rate("s3://bench/store", seconds, opts)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--read-seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        kind = make_source(tmp / "source", args.images)
        print(
            f"{args.images} {kind}, {args.workers} worker processes, batches of {args.batch_size}"
        )
        source = tmp / "source"
        lims, bares, cpu_l, cpu_b, rss = [], [], [], [], 0
        with _pool(args.workers, next(source.glob("*.png"))) as pool:
            # Alternate the two in rounds and keep each one's best: a busy
            # machine then slows both alike instead of whichever ran last.
            for i in range(args.rounds):
                rate, cpu = limit(pool, source, args.batch_size)
                lims.append(rate)
                cpu_l.append(cpu)
                rate, cpu, peak = bare(pool, source, str(tmp / f"store{i}"), args.batch_size)
                bares.append(rate)
                cpu_b.append(cpu)
                rss = max(rss, peak)
            only, _, _ = bare(pool, source, str(tmp / "only"), args.batch_size, ())
        lim, rate = max(lims), max(bares)
        cl, cb = min(cpu_l), min(cpu_b)
        print(f"decode + run_pipeline (the limit): {lim:7.1f} scans/s, {cl * 1e3:5.1f} ms CPU/scan")
        print(f"bare batch loop, default store:   {rate:7.1f} scans/s, {cb * 1e3:5.1f} ms CPU/scan")
        print(f"  ratio to the limit: {rate / lim:.2f} in scans/s, {cl / cb:.2f} in CPU per scan")
        print(f"bare batch loop, preprocessed only: {only:5.1f} scans/s (no edge kernels)")
        print(f"peak RSS of a worker (batches of {args.batch_size}):  {rss / 2**20:7.0f} MB")
        sizes = bytes_per_array(tmp / "store0", args.images)
        for name, b in sizes.items():
            print(f"  {name:20s} {b / 1e6:6.3f} MB per scan")
        total = sum(sizes.values())
        only_total = sum(bytes_per_array(tmp / "only", args.images).values())
        print(
            f"store per scan: default {total / 1e6:.2f} MB, preprocessed only "
            f"{only_total / 1e6:.2f} MB"
        )
        local = read_rate(str(tmp / "store0"), args.read_seconds)
        print(f"ScanDataset random reads, local store:  {local:7.1f} items/s (one process)")
        s3 = s3_read_rate(tmp / "store0", args.read_seconds)
        if s3 is not None:
            print(f"ScanDataset random reads, moto S3:      {s3:7.1f} items/s (one process)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
