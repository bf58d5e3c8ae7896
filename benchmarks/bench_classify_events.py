"""Classification triggered by events, against a real ``prefect server``.

A preprocessing run writes a store of ``--batches`` batches of small scans and emits
as many ``xray.batch.committed`` events (and one ``xray.run.committed``); the
deployment ``classify-store/on-commit`` of ``deploy/prefect.yaml`` runs on a
process worker. Reported: how many classification flow runs the events started,
how long until every row had a prediction, and how many rows each run scored
(each row once: total work linear in rows).

    .venv/bin/python benchmarks/bench_classify_events.py [--batches 200] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import free_port, prefect_env, prefect_server_process  # noqa: E402


def prefect(env, *args) -> str:
    res = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(f"prefect {' '.join(args)}: {res.stdout}\n{res.stderr}")
    return res.stdout


def make_inputs(tmp: Path, n: int) -> tuple[Path, Path, str]:
    """``n`` small phantom scans, the store's path and a mean model (32x32 inputs)."""
    from onnx_models import mean_model

    from xraycore.image.synth import phantom_chest

    src = tmp / "scans"
    src.mkdir()
    for i in range(n):
        cv2.imwrite(str(src / f"p{i:05d}.png"), phantom_chest(64, seed=i % 50))
    model = mean_model(tmp / "mean.onnx", size=32)
    Path(model + ".json").write_text('{"size": 32}')  # its contract: 32x32 inputs
    return src, tmp / "store", model


def start_worker(env) -> subprocess.Popen:
    """The deployments of deploy/prefect.yaml and a process worker that runs them."""
    prefect(env, "work-pool", "create", "xray-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "xray-process"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    n = args.batches * args.batch_size
    src, store, model = make_inputs(tmp, n)
    port = free_port()
    env = {
        **prefect_env(tmp / "prefect-home", port),
        "XRAY_PIPELINE_HOME": str(ROOT),
        "XRAY_SOURCE": str(src),
        "XRAY_STORE": str(store),
        "XRAY_MODEL": model,
        "XRAY_DASK_CLUSTER": "local",
    }
    with prefect_server_process(env, port, tmp / "server.log"):
        worker = start_worker(env)
        try:
            os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")})
            measure(args, src, store, n)
        finally:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)


def measure(args, src: Path, store: Path, n: int) -> None:
    """One preprocessing run, then the classification runs its events start."""
    from prefect.client.orchestration import get_client

    from flows.cluster import local_cluster
    from flows.preprocess import preprocess_dataset

    t0 = time.perf_counter()
    summary = preprocess_dataset(
        source=str(src),
        store=str(store),
        size=32,
        batch_size=args.batch_size,
        cluster=local_cluster(2),
        sheet=False,
    )
    t_pre = time.perf_counter() - t0
    assert summary["ok"] == n, summary
    with get_client(sync_client=True) as client:
        report(client, args, store, n, t0, t_pre)


def report(client, args, store: Path, n: int, t0: float, t_pre: float) -> None:
    """Wait for every row's prediction and the runs to end; print what they did."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from xraycore.store import ScanStore

    dep = client.read_deployment_by_name("classify-store/on-commit")
    only = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
    deadline = time.time() + 900
    t_scored = None
    while time.time() < deadline:
        preds = ScanStore.open(str(store)).read_predictions()
        if t_scored is None and preds is not None and preds.num_rows == n:
            t_scored = time.perf_counter() - t0
        runs = client.read_flow_runs(deployment_filter=only)
        busy = [r for r in runs if not (r.state and r.state.is_final())]
        if t_scored is not None and not busy:
            break
        time.sleep(1)
    t_all = time.perf_counter() - t0
    time.sleep(10)  # anything still to be triggered by late events
    runs = client.read_flow_runs(deployment_filter=only)
    print(
        f"# {n} scans in {args.batches} batches of {args.batch_size}: "
        f"{args.batches} xray.batch.committed events + 1 xray.run.committed"
    )
    print(f"preprocessing run: {t_pre:.1f} s")
    print(
        f"classify-store runs started by the events: {len(runs)}; all {n} rows scored "
        f"{t_scored:.1f} s and the last run finished {t_all:.1f} s after the "
        "preprocessing run started"
    )
    total_rows = 0
    for r in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id])))
        line = next((x.message for x in logs if "have no prediction" in x.message), "")
        rows = int(line.split()[0]) if line else 0
        total_rows += rows
        took = (
            (r.end_time - r.start_time).total_seconds()
            if r.end_time and r.start_time
            else float("nan")
        )
        print(f"  {r.name}: {r.state.name}, {took:.1f} s, scored {rows} rows")
    print(f"rows scored in all runs: {total_rows} (rows in the store: {n})")


if __name__ == "__main__":
    main()
