"""Real servers and processes for the reliability drills, all on loopback:
a Prefect API server, a moto S3 server, dask scheduler and worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import BIN, free_port, wait_for


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One real Prefect API server (SQLite, temporary PREFECT_HOME) for the drills."""
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"xray-drills-prefect-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=free_port())
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    yield server.api_url
    server.stop()
    os.environ.pop("PREFECT_API_URL", None)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def dask_processes(tmp_path, prefect_server):
    """`dask scheduler` and two `dask worker` processes (each with its nanny) on loopback."""
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    wait_for(scheduler_file.exists, 60, "the dask scheduler")
    address = json.loads(scheduler_file.read_text())["address"]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for p in procs[::-1]:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
