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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect(env, *args) -> str:
    res = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(f"prefect {' '.join(args)}: {res.stdout}\n{res.stderr}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    from onnx_models import mean_model

    from xraycore.image.synth import phantom_chest

    tmp = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    src = tmp / "scans"
    src.mkdir()
    n = args.batches * args.batch_size
    for i in range(n):
        cv2.imwrite(str(src / f"p{i:05d}.png"), phantom_chest(64, seed=i % 50))
    store = tmp / "store"
    model = mean_model(tmp / "mean.onnx", size=32)
    Path(model + ".json").write_text('{"size": 32}')  # its contract: 32x32 inputs
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "XRAY_PIPELINE_HOME": str(ROOT),
        "XRAY_SOURCE": str(src),
        "XRAY_STORE": str(store),
        "XRAY_MODEL": model,
        "XRAY_DASK_CLUSTER": "local",
    }
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = None
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        prefect(env, "work-pool", "create", "xray-process", "--type", "process")
        prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "xray-process"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")})
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            LogFilter,
            LogFilterFlowRunId,
        )

        from flows.cluster import local_cluster
        from flows.preprocess import preprocess_dataset
        from xraycore.store import ScanStore

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
                logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id]))
                )
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
    finally:
        for proc in (worker, server):
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
