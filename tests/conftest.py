"""Shared fixtures: the real scans in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHESTXRAY8 = SHARED / "chestxray8"
DAMAGED = SHARED / "damaged"


def _need(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*") if p.suffix in (".png", ".jpg"))
    if not files:
        pytest.skip(f"real data folder {folder} is absent (CI provides ../shared)")
    return files


@pytest.fixture(scope="session")
def chestxray8_files() -> list[Path]:
    return _need(CHESTXRAY8)


@pytest.fixture(scope="session")
def damaged_files() -> list[Path]:
    return _need(DAMAGED)


@pytest.fixture(scope="session")
def real_scan(chestxray8_files) -> np.ndarray:
    import cv2

    return cv2.imread(str(chestxray8_files[0]), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto in server mode on a loopback port: a real S3 API over HTTP."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def start_dask_processes():
    """:func:`dask_processes_on_loopback`, for the flow tests and the drills."""
    return dask_processes_on_loopback


@contextlib.contextmanager
def dask_processes_on_loopback(folder: Path, env: dict | None = None, workers: int = 2):
    """Real ``dask scheduler`` and ``dask worker`` processes (each worker with its
    nanny) on loopback; yields (scheduler address, worker pids) once all are up."""
    import json
    import subprocess
    import sys
    import time

    from distributed import Client

    bindir = Path(sys.executable).parent
    scheduler_file = folder / "scheduler.json"
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"]
    procs = [
        subprocess.Popen(
            [*scheduler, "--no-dashboard", "--scheduler-file", str(scheduler_file)], **quiet
        )
    ]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = [str(bindir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard"]
        for _ in range(workers):
            procs.append(subprocess.Popen([*worker, "--host", "127.0.0.1"], **quiet))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            pids = set(client.run(os.getpid).values())
        yield address, pids
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
