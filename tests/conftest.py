"""Shared fixtures: the real scans in ../shared (skipped with a reason when absent)
and the real servers, one fixture each: moto (S3), Prefect's API, Dask processes."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from real_data import CHESTXRAY8, DAMAGED
from servers import AWS_ENV, free_port

# A flow run without PREFECT_API_URL (an `xray` subprocess of a test) gets a
# temporary Prefect API that ends with it, never the background server that
# `xray run` leaves for a user's later runs (tests/flows/test_prefect_api.py
# tests that one on its own, in a temporary PREFECT_HOME).
os.environ["XRAY_PREFECT_SERVER"] = "temporary"


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
def moto_endpoint(tmp_path_factory):
    """The session's one moto server (server mode, loopback): a real S3 API over HTTP.

    In a process of its own, as a user's S3 is: in a thread of the test process it
    would need the GIL to answer, which a native client (delta-rs) may hold while
    it waits for the answer.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(
                    f"moto server did not start: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_server(moto_endpoint, monkeypatch):
    """:func:`moto_endpoint` with the standard AWS environment (keys, region,
    ``AWS_ENDPOINT_URL``) exported for this test, as an operator's shell has it;
    the environment is restored afterwards."""
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    return moto_endpoint


@pytest.fixture(scope="session")
def prefect_server():
    """The session's one real Prefect API server (SQLite, temporary PREFECT_HOME).

    Exports ``PREFECT_API_URL`` for the processes the tests start, and hands the
    URL to Prefect's settings in this process too: they were read when the test
    modules imported the flows, and a flow called here would otherwise start an
    ephemeral server of its own.
    """
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"xray-prefect-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=free_port())
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    server.stop()
    os.environ.pop("PREFECT_API_URL", None)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): the test machines have two cores shared with other work,
    where torch's OpenMP threads spin against each other (a step 5-10x slower than on one)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
            if workers:  # none: a scheduler for workers started elsewhere (containers)
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


# Tests that fork DataLoader workers run first: workers forked from a process that
# has run a Prefect flow (the flow tests run flows in this process) exit with code 1
# as they finish (xraycore.train._torch.worker_context). The library's own
# DataLoaders start their workers from a fork server in such a process; these tests
# also check plain forked workers, which a training script (no flow) gets.
_FORKS_WORKERS = ("test_loader.py", "test_cnn.py", "test_train.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name not in _FORKS_WORKERS)
