"""Runs at the scale the store exists for, each in one go (issue 29's run goals):

- ``scale``: ``xray run`` over N tiny PNGs (16x16, default 112,120: ChestX-ray8's
  count) with a ChestX-ray8 labels CSV, ``--size 16 --batch-size 64``, 2
  workers; the images/s over the first and the last 10% of the inputs (from
  the progress events' times, after the first batch) and the metadata
  versions the run added.
- ``nights``: ``--nights`` runs into one store, each adding 64 new files, with
  a no-op run after the 2nd and after the last; wall time of each.
- ``year``: a store with a year of nights' versions (``--year`` x the commits a
  night makes: fence, a group of 64 rows, its end), made through the store's own
  commit path, and a store with the same rows committed in one version; three
  nights, each with a no-op, on each, alternating (medians): what the versions
  cost, apart from what the rows cost.
- ``idle``: the CPU seconds a LocalCluster of 8 workers (1 thread each), as a
  run starts it, spends over 20 idle seconds, in its worker processes and in
  this process (scheduler and nannies), with distributed's housekeeping
  intervals set by hand (a user's config wins) and with the run's own.
- ``workers``: ``xray run`` over 8,000 tiny PNGs in batches of 16 with
  ``--workers 2`` and with ``--workers 8``, alternating ``--repeat`` times:
  the median images/s of each.

Every ``xray run`` is the command line against a Prefect server started here
(as a user's runs reuse theirs).

    .venv/bin/python benchmarks/bench_nights.py [--parts scale,nights,year,idle,workers]
        [--images 112120] [--nights 40] [--year 365] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from servers import free_port, prefect_env, prefect_server_process  # noqa: E402

XRAY = Path(sys.executable).parent / "xray"


def _pngs(folder: Path, n: int, first: int = 0) -> None:
    """``n`` tiny PNGs ``00000123_000.png`` (ChestX-ray8's names), 4 distinct images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    blobs = [cv2.imencode(".png", rng.integers(0, 255, (16, 16), np.uint8))[1].tobytes()]
    blobs += [cv2.imencode(".png", rng.integers(0, 255, (16, 16), np.uint8))[1].tobytes()]
    for i in range(first, first + n):
        (folder / f"{i:08d}_000.png").write_bytes(blobs[i % 2])


def _labels(path: Path, n: int) -> None:
    findings = ("No Finding", "Effusion", "Cardiomegaly|Effusion", "Mass")
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender"]
    lines += [f"{i:08d}_000.png,{findings[i % 4]},0,{i // 3},50,M" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def _xray_run(env: dict, source: Path, store: Path, *extra: str) -> tuple[float, list[dict]]:
    """Wall seconds of one ``xray run`` and its JSON events (with the time each
    was read)."""
    args = [str(XRAY), "run", str(source), "--store", str(store), "--size", "16"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*args, *extra, "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = []
    for line in proc.stdout:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        record["_t"] = time.perf_counter() - t0
        events.append(record)
    err = proc.stderr.read()
    if proc.wait():
        raise RuntimeError(err[-3000:])
    return time.perf_counter() - t0, events


def _progress(events: list[dict]) -> list[tuple[float, int]]:
    """(time, images done) of each progress line."""
    return [(e["time"], e["done"]) for e in events if e.get("event") == "progress"]


def _rate(a: tuple[float, int], b: tuple[float, int]) -> float:
    return (b[1] - a[1]) / max(b[0] - a[0], 1e-9)


def _versions(store: Path) -> int:
    from xraycore.store import ScanStore

    return ScanStore.open(str(store)).version or 0


def _rows(store: Path) -> tuple[int, int]:
    """(rows, ok rows) of the store's latest version, as any Delta reader counts them."""
    from deltalake import DeltaTable

    from xraycore.store import schema

    table = DeltaTable(str(store / schema.METADATA)).to_pyarrow_table(columns=["status"])
    return table.num_rows, table["status"].to_pylist().count("ok")


def _scale(env: dict, work: Path, n: int) -> None:
    source, store, csv = work / "cxr8", work / "store-cxr8", work / "Data_Entry_2017.csv"
    _pngs(source, n)
    _labels(csv, n)
    _, events = _xray_run(env, source, store, "--batch-size", "64", "--labels", str(csv))
    progress = _progress(events)
    t_first = progress[0][0]
    # The progress lines come every 10% (or 10 s): the first 10% runs from the
    # first batch to the first line past 10%, the last from the last line
    # before 90% to the end.
    tenth = next(i for i, (_, d) in enumerate(progress) if d >= 0.1 * n)
    ninth = max(i for i, (_, d) in enumerate(progress) if d <= 0.9 * n)
    first, last = _rate(progress[0], progress[tenth]), _rate(progress[ninth], progress[-1])
    whole = _rate(progress[0], progress[-1])
    rows, ok = _rows(store)
    print(
        f"scale: {n} inputs, {progress[-1][0] - t_first:.0f} s after the first batch; "
        f"images/s first 10% {first:.0f}, "
        f"last 10% {last:.0f} (ratio {last / first:.2f}), whole {whole:.0f}; "
        f"versions added {_versions(store)}; rows {rows} ({ok} ok)"
    )


def _nights(env: dict, work: Path, nights: int) -> None:
    source, store = work / "nightly", work / "store-nightly"
    walls, noops = [], {}
    for night in range(nights):
        _pngs(source, 64, first=night * 64)
        walls.append(_xray_run(env, source, store, "--batch-size", "64")[0])
        if night in (1, nights - 1):
            noops[night + 1] = _xray_run(env, source, store, "--batch-size", "64")[0]
    print(
        f"nights: run 2 {walls[1]:.1f} s, run {nights} {walls[-1]:.1f} s "
        f"(ratio {walls[-1] / walls[1]:.2f}); no-op after run 2 {noops[2]:.1f} s, after run "
        f"{nights} {noops[nights]:.1f} s (ratio {noops[nights] / noops[2]:.2f}); "
        f"versions {_versions(store)}; runs: {' '.join(f'{w:.1f}' for w in walls)}"
    )


def _year(env: dict, work: Path, year: int) -> None:
    """Nights on a store with a year of nights' versions, against nights on a store
    with the same rows committed in one version: what the versions cost."""
    stores = {"year": work / "store-year", "flat": work / "store-flat"}
    sources = {name: work / f"nightly-{name}" for name in stores}
    for name, store in stores.items():
        _pngs(sources[name], 64)
        _xray_run(env, sources[name], store, "--batch-size", "64")
    t = time.perf_counter()
    _year_of_versions(stores["year"], year)
    made = time.perf_counter() - t
    _year_of_versions(stores["flat"], year, one_commit=True)
    walls: dict[str, list[float]] = {name: [] for name in stores}
    noops: dict[str, list[float]] = {name: [] for name in stores}
    for k in range(3):  # alternating, so the machine's load moves both
        for name, store in stores.items():
            _pngs(sources[name], 64, first=(k + 1) * 64)
            walls[name].append(_xray_run(env, sources[name], store, "--batch-size", "64")[0])
            noops[name].append(_xray_run(env, sources[name], store, "--batch-size", "64")[0])
    night = {name: statistics.median(w) for name, w in walls.items()}
    noop = {name: statistics.median(w) for name, w in noops.items()}
    print(
        f"year: {year} nights' commits made in {made:.0f} s: {_versions(stores['year'])} "
        f"versions, {_rows(stores['year'])[0]} rows; the same rows in one commit: "
        f"{_versions(stores['flat'])} versions. A night on each, median of 3: "
        f"{night['year']:.1f} s / {night['flat']:.1f} s (x{night['year'] / night['flat']:.2f}); "
        f"a no-op {noop['year']:.1f} s / {noop['flat']:.1f} s "
        f"(x{noop['year'] / noop['flat']:.2f})"
    )


def _year_of_versions(store: Path, nights: int, *, one_commit: bool = False) -> None:
    """The commits ``nights`` nights make, through the store's commit path: the
    fence, one group of 64 rows (sources that no listing finds) and the run's end;
    with ``one_commit``, the same rows in one group of one run."""
    from xraycore.store import ScanStore

    target = ScanStore.open(str(store))
    pipeline = target.info()["pipeline_hash"]
    if one_commit:
        target.fence("flat")
        files = [target.write_rows(_year_rows(n, pipeline, "flat"), run_id="flat", part=n * 64)
                 for n in range(nights)]  # fmt: skip
        target.commit_row_files(files, run_id="flat", group=1, fence="flat")
        target.finish_run("flat")
        target.end_run("flat")
        return
    for night in range(nights):
        run = f"year{night:04d}"
        target.fence(run)
        written = target.write_rows(_year_rows(night, pipeline, run), run_id=run, part=night * 64)
        target.commit_row_files([written], run_id=run, group=1, fence=run)
        target.finish_run(run)
        target.end_run(run)


def _year_rows(night: int, pipeline: str, run: str) -> list[dict]:
    """A night's 64 rows: failed rows of sources that no listing finds (they point
    at no pixels)."""
    from xraycore.store import columns

    return [
        columns.metadata_row(
            image_id=f"y{night}-{i}.png", source=f"/elsewhere/y{night}-{i}.png", size=1,
            mtime=0.0, pipeline_hash=pipeline, run_id=run,
        )
        for i in range(64)
    ]  # fmt: skip


def _idle_cpu(quiet: bool, workers: int = 8, idle_s: float = 20.0) -> tuple[float, float]:
    """CPU seconds of a run's LocalCluster over ``idle_s`` idle seconds: its
    workers', and this process's (scheduler and nannies); ``quiet=False``
    starts it with distributed's own housekeeping intervals."""
    import psutil

    import flows.cluster as fc

    spec = fc.resolve_cluster(fc.local_cluster(workers, dashboard_address=":0"))
    me = psutil.Process()

    def cpu() -> tuple[float, float]:
        kids = sum(sum(p.cpu_times()[:2]) for p in me.children(recursive=True))
        return kids, sum(me.cpu_times()[:2])

    saved = fc.HOUSEKEEPING
    fc.HOUSEKEEPING = saved if quiet else {}
    try:
        with fc.DaskCluster(spec) as cluster:
            cluster.client().wait_for_workers(workers)
            time.sleep(2)  # the workers' start is not idle time
            (k0, s0), _, (k1, s1) = cpu(), time.sleep(idle_s), cpu()
    finally:
        fc.HOUSEKEEPING = saved
    return k1 - k0, s1 - s0


def _idle(repeat: int) -> None:
    for attempt in range(repeat):
        for name, quiet in (("distributed's intervals", False), ("the run's", True)):
            workers, here = _idle_cpu(quiet)
            print(
                f"idle {attempt + 1}: 8 workers, 20 s, {name}: workers {workers:.2f} CPU s, "
                f"scheduler and nannies {here:.2f} CPU s",
                flush=True,
            )


def _workers(env: dict, work: Path, repeat: int) -> None:
    source = work / "eight-thousand"
    _pngs(source, 8000)
    rates: dict[int, list[float]] = {2: [], 8: []}
    for attempt in range(repeat):  # alternating, so the machine's load moves both
        for workers in (2, 8):
            store = work / f"store-w{workers}-{attempt}"
            _, events = _xray_run(
                env, source, store, "--batch-size", "16", "--workers", str(workers)
            )
            progress = _progress(events)
            rates[workers].append(_rate(progress[0], progress[-1]))
    two, eight = statistics.median(rates[2]), statistics.median(rates[8])
    pairs = statistics.median(e / t for t, e in zip(rates[2], rates[8], strict=True))
    print(
        f"workers: 8,000 inputs in batches of 16, median of {repeat}: --workers 2 {two:.0f} "
        f"images/s, --workers 8 {eight:.0f} images/s (ratio {eight / two:.2f}; median of the "
        f"ratios pair by pair {pairs:.2f}); each: "
        f"{' '.join(f'{r:.0f}' for r in rates[2])} / {' '.join(f'{r:.0f}' for r in rates[8])}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="scale,nights,year,idle,workers")
    ap.add_argument("--images", type=int, default=112_120)
    ap.add_argument("--nights", type=int, default=40)
    ap.add_argument("--year", type=int, default=365)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each --workers")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-nights-") as tmp:
        work, port = Path(tmp), free_port()
        env = prefect_env(work / "prefect", port)
        with prefect_server_process(env, port, work / "prefect.log"):
            if "scale" in parts:
                _scale(env, work, args.images)
            if "nights" in parts:
                _nights(env, work, args.nights)
            if "year" in parts:
                _year(env, work, args.year)
            if "idle" in parts:
                _idle(args.repeat)
            if "workers" in parts:
                _workers(env, work, args.repeat)


if __name__ == "__main__":
    main()
