"""A run waits for its first Dask worker for a time the user sets, then fails saying so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port


def test_worker_timeout_from_spec_and_environment(tmp_path, monkeypatch):
    from flows.cluster import resolve_cluster

    spec = tmp_path / "spec.yaml"
    spec.write_text("address: tcp://127.0.0.1:8786\nworker_timeout_s: 30\n")
    assert resolve_cluster(cluster=str(spec)).worker_timeout_s == 30
    assert resolve_cluster(cluster="local").worker_timeout_s == 600
    monkeypatch.setenv("XRAY_WORKER_TIMEOUT_S", "5")
    assert resolve_cluster(cluster=str(spec)).worker_timeout_s == 5
    monkeypatch.setenv("XRAY_WORKER_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="XRAY_WORKER_TIMEOUT_S must be .* got 'soon'"):
        resolve_cluster(cluster=str(spec))
    monkeypatch.delenv("XRAY_WORKER_TIMEOUT_S")
    spec.write_text("address: tcp://127.0.0.1:8786\nworker_timeout_s: 0\n")
    with pytest.raises(ValueError, match="worker_timeout_s must be .* got 0"):
        resolve_cluster(cluster=str(spec))


def test_waiting_for_a_scheduler_without_workers_times_out(tmp_path, monkeypatch):
    from flows.cluster import DaskCluster, resolve_cluster

    port = free_port()
    command = [str(Path(sys.executable).parent / "dask"), "scheduler", "--host", "127.0.0.1"]
    scheduler = subprocess.Popen(
        [*command, "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("XRAY_WORKER_TIMEOUT_S", "2")
        where = resolve_cluster(f"tcp://127.0.0.1:{port}")
        with DaskCluster(where) as cluster:
            with pytest.raises(TimeoutError, match="no Dask worker joined within 2 s"):
                cluster.client()
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=20)
