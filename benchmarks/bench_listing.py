"""A night's run over a DICOM bucket, in one run: listing rates, a no-op ``xray run``,
and the flow process's memory against the number of batch tasks.

- Listing: :func:`xraycore.sources.catalog.list_sources` over N DICOMs (every 20th
  three frames) and N PNGs (256x256, 8-bit), on the moto S3 server (its own
  process, loopback) and on local disk; files/s. As the flow lists
  (``count_frames=False``: the batches count a new DICOM's frames) and with
  every new DICOM's header read. Beside it, what moto alone serves: 8 KiB
  ranged GETs one after another and through ``cat_ranges``.
- Runs: ``xray run`` builds a store of each source, then runs again with
  nothing to do; each run's wall time, and the GETs of source objects it
  sent (counted by the drills' proxy in front of moto).
- Memory: the flow over ``--rss-sizes`` tiny PNGs (32x32, local, batches of
  32), each size in a fresh process; its peak RSS and its RSS before the
  commit, and the slope per batch task between the two sizes.

    .venv/bin/python benchmarks/bench_listing.py [--files 2000] [--rss-sizes 10000,40000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "drills"))

from servers import AWS_ENV, free_port, prefect_env, prefect_server_process  # noqa: E402

XRAY = Path(sys.executable).parent / "xray"


def _images(n: int) -> dict[str, bytes]:
    import cv2
    import numpy as np
    from dicom_files import make_dicom

    rng = np.random.default_rng(0)
    scan = (rng.random((256, 256)) * 255).astype(np.uint8)
    single, multi = make_dicom(scan), make_dicom(np.stack([scan] * 3))
    png = cv2.imencode(".png", scan)[1].tobytes()
    files = {f"dcm/{i:05d}.dcm": multi if i % 20 == 0 else single for i in range(n)}
    return files | {f"png/{i:05d}.png": png for i in range(n)}


def _moto(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def _listing(url: str, count_frames: bool) -> float:
    from xraycore.sources.catalog import list_sources
    from xraycore.store.storage import Storage

    source = Storage.from_url(url)
    t = time.perf_counter()
    files = {f.uri for f in list_sources(source, count_frames=count_frames)}
    return len(files) / (time.perf_counter() - t)


def _moto_alone(bucket: str, n: int) -> tuple[float, float]:
    """8 KiB ranged GETs/s one after another, and through cat_ranges (64 in flight)."""
    from xraycore.store.storage import Storage

    st = Storage.from_url(f"s3://{bucket}/dcm")
    rels = [f"{i:05d}.dcm" for i in range(n)]
    t = time.perf_counter()
    for rel in rels[:300]:
        st.read_range(rel, 0, 8192)
    sequential = 300 / (time.perf_counter() - t)
    t = time.perf_counter()
    st.read_ranges(rels, [0] * n, [8192] * n)
    return sequential, n / (time.perf_counter() - t)


def _xray_run(source: str, store: str, env: dict[str, str]) -> float:
    args = [str(XRAY), "run", source, "--store", store, "--size", "64", "--batch-size", "32"]
    t = time.perf_counter()
    res = subprocess.run([*args, "--workers", "2"], env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stdout + res.stderr)
    return time.perf_counter() - t


def _noop_runs(bucket: str, local: Path, moto: str, env: dict[str, str]) -> dict:
    from faulty_proxy import FaultyProxy

    out = {}
    with FaultyProxy(moto, faults=()) as proxy:
        s3_env = {**env, "AWS_ENDPOINT_URL": proxy.url}
        for kind in ("dcm", "png"):
            for where, source, store in (
                ("S3", f"s3://{bucket}/{kind}", f"s3://{bucket}/store-{kind}"),
                ("local", str(local / kind), str(local / f"store-{kind}")),
            ):
                proxy.log.clear()
                first = _xray_run(source, store, s3_env)  # builds the store
                first_gets = len(proxy.gets(f"/{bucket}/{kind}/"))
                proxy.log.clear()
                seconds = _xray_run(source, store, s3_env)
                gets = len(proxy.gets(f"/{bucket}/{kind}/"))
                out[kind, where] = (first, first_gets, seconds, gets)
    return out


def _rss_child(n: int, folder: Path) -> None:
    """In a fresh process: the flow over ``n`` tiny PNGs; prints its memory."""
    import cv2
    import numpy as np
    import psutil

    from flows.cluster import local_cluster
    from flows.preprocess import preprocess_dataset
    from flows.progress import observe
    from flows.server import run_flow

    src = folder / f"tiny{n}"
    src.mkdir(parents=True)
    png = cv2.imencode(".png", (np.random.default_rng(0).random((32, 32)) * 255).astype("u1"))[1]
    for i in range(n):
        (src / f"s{i:06d}.png").write_bytes(png.tobytes())
    me, before_commit = psutil.Process(), [0]

    def watch(event: str, fields: dict) -> None:
        if event == "batch" and fields["batches_done"] == fields["batches"]:
            before_commit[0] = me.memory_info().rss

    with observe(watch):
        summary = run_flow(
            preprocess_dataset,
            source=str(src),
            store=str(folder / f"store{n}"),
            size=32,
            batch_size=32,
            cluster=local_cluster(2),
            sheet=False,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"RSS {summary['batches']} {peak} {before_commit[0]}", flush=True)


def _rss(sizes: list[int], folder: Path, env: dict[str, str]) -> list[tuple[int, int, int, int]]:
    out = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--dir", str(folder)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RSS ")), None)
        if line is None:
            raise RuntimeError(res.stdout + res.stderr)
        tasks, peak, before = map(int, line.split()[1:])
        out.append((n, tasks, peak, before))
    return out


def _report_listing(n: int, listing: dict, alone: tuple[float, float]) -> None:
    print(f"\nlisting, files/s ({n} DICOMs, {n // 20} of them 3 frames; {n} PNGs; 256x256)")
    print("  the flow's (frames counted by the batches) | list_sources (headers read)")
    for kind, where in (("dcm", "S3"), ("dcm", "local"), ("png", "S3"), ("png", "local")):
        flow, counting = listing[kind, where, False], listing[kind, where, True]
        print(f"  {kind:4s} {where:6s} {flow:8.0f} | {counting:8.0f}")
    flow = listing["dcm", "S3", False] / listing["png", "S3", False]
    counting = listing["dcm", "S3", True] / listing["png", "S3", True]
    print(f"  DICOMs/PNGs on S3: {flow:.2f} | {counting:.2f} (target >= 0.5)")
    print(f"moto alone: {alone[0]:.0f} ranged GETs/s in a loop, {alone[1]:.0f}/s via cat_ranges")


def _report_noop(noop: dict) -> None:
    print("xray run: first run s, its GETs of source objects; no-op run s, its GETs")
    for (kind, where), (first, first_gets, seconds, gets) in noop.items():
        print(f"  {kind:4s} {where:6s} {first:6.1f} s {first_gets:6d} {seconds:6.1f} s {gets:6d}")
    first = noop["dcm", "S3"][0] / noop["png", "S3"][0]
    noop_ratio = noop["dcm", "S3"][2] / noop["png", "S3"][2]
    print(f"  DICOMs/PNGs on S3: first run {first:.2f}, no-op {noop_ratio:.2f} (target <= 1.5)")


def _report_rss(rss: list[tuple[int, int, int, int]]) -> None:
    print("flow process: inputs, batch tasks, peak RSS, RSS before the commit (MB)")
    for size, tasks, peak, before in rss:
        print(f"  {size:7d} {tasks:6d} {peak / 1e6:8.0f} {before / 1e6:8.0f}")
    (_, t0, p0, b0), (_, t1, p1, b1) = rss[0], rss[-1]
    print(
        f"  slope per batch task: peak {(p1 - p0) / (t1 - t0) / 1e3:.0f} KB, "
        f"before the commit {(b1 - b0) / (t1 - t0) / 1e3:.0f} KB (target <= 60 KB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rss-sizes", default="10000,40000")
    parser.add_argument(
        "--parts", default="listing,noop,rss", help="which measurements (comma-separated)"
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child, args.dir)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as tmp:
        tmp = Path(tmp)
        port, api_port = free_port(), free_port()
        moto_url = f"http://127.0.0.1:{port}"
        os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": moto_url})
        env = {**prefect_env(tmp / "prefect-home", api_port), "PYTHONPATH": str(ROOT)}
        moto = _moto(port)
        try:
            from xraycore.store.storage import Storage

            bucket = "bench-listing"
            remote = Storage.from_url(f"s3://{bucket}")
            remote.makedirs()
            files = _images(args.files)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(remote.write_bytes_atomic, files, files.values()))
            for rel, data in files.items():
                (tmp / "local" / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / "local" / rel).write_bytes(data)
            if "listing" in parts:
                listing = {
                    (kind, where, count): _listing(url, count)
                    for kind in ("dcm", "png")
                    for where, url in (
                        ("S3", f"s3://{bucket}/{kind}"),
                        ("local", str(tmp / "local" / kind)),
                    )
                    for count in (False, True)
                }
                _report_listing(args.files, listing, _moto_alone(bucket, args.files))
            with prefect_server_process(env, api_port, tmp / "server.log"):
                if "noop" in parts:
                    _report_noop(_noop_runs(bucket, tmp / "local", moto_url, env))
                if "rss" in parts:
                    sizes = [int(s) for s in args.rss_sizes.split(",")]
                    _report_rss(_rss(sizes, tmp / "rss", env))
        finally:
            moto.terminate()


if __name__ == "__main__":
    main()
