"""Real servers and processes for the reliability drills, all on loopback:
a Prefect API server, a moto S3 server, dask scheduler and worker processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import free_port


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
def dask_processes(tmp_path, prefect_server, start_dask_processes):
    """`dask scheduler` and two `dask worker` processes (each with its nanny) on loopback."""
    with start_dask_processes(tmp_path) as (address, _):
        yield address
