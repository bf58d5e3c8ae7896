"""The drills' real parts, all on loopback: the session's Prefect API server and
moto S3 server (tests/conftest.py), dask scheduler and worker processes."""

from __future__ import annotations

import pytest
from fixtures import prefect_api  # noqa: F401 (every drill talks to the server)


@pytest.fixture
def dask_processes(tmp_path, prefect_server, start_dask_processes):
    """`dask scheduler` and two `dask worker` processes (each with its nanny) on loopback."""
    with start_dask_processes(tmp_path) as (address, _):
        yield address


@pytest.fixture(autouse=True)
def one_version_per_batch(monkeypatch):
    """Every batch its own group commit (flows/commits.py): the drills kill a run
    between two committed batches, which a run's default groups would merge."""
    monkeypatch.setenv("XRAY_COMMIT_FIRST_S", "0")
