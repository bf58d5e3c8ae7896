"""`xray run --cluster SPEC.yaml` on a real one-node SLURM (dask_jobqueue.SLURMCluster):
rows right, a job cancelled mid-run survived, no job left behind; a request SLURM
never schedules says what it waits for, then fails after the spec's timeout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import (
    BATCH,
    assert_store_complete,
    clean_reference,
    committed_batches,
    wait_for,
    write_phantoms,
    xray_popen,
)

pytest.importorskip("dask_jobqueue", reason="pip install 'xray-pipeline[slurm]'")

ROOT = Path(__file__).resolve().parents[2]
SOURCE_SIZE, SIZE, N = 512, 256, 64


def slurm_spec(folder: Path, *, queue: str = "debug", timeout_s: float = 120) -> Path:
    """A SLURMCluster spec of two one-core jobs, everything on loopback."""
    spec = {
        "cluster_class": "dask_jobqueue.SLURMCluster",
        "cluster_kwargs": {
            "queue": queue,
            "cores": 1,
            "processes": 1,
            "memory": "500MB",
            "walltime": "00:10:00",
            "n_workers": 2,
            "interface": "lo",
            "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
            "python": sys.executable,
            "job_script_prologue": [f"export PYTHONPATH={ROOT}"],
            "job_extra_directives": [f"--chdir={folder}"],
            "log_directory": str(folder / "slurm-logs"),
            "local_directory": str(folder / "worker-space"),
        },
        "worker_timeout_s": timeout_s,
    }
    path = folder / "slurm-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_env(slurm, api_url: str) -> dict[str, str]:
    return {**slurm.env, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api_url}


def finish(proc, timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_slurm_run_survives_a_cancelled_job_and_leaves_no_job(
    slurm, prefect_server, tmp_path, capsys
):
    t0 = time.monotonic()
    source, store = tmp_path / "source", tmp_path / "store"
    write_phantoms(source, N, size=SOURCE_SIZE)
    spec = slurm_spec(tmp_path)
    args = ["run", str(source), "--store", str(store), "--size", str(SIZE)]
    args += ["--batch-size", str(BATCH), "--cluster", str(spec)]
    proc = xray_popen(*args, env=run_env(slurm, prefect_server), cwd=tmp_path)
    try:
        wait_for(lambda: committed_batches(store), 120, "the first committed batch", poll=0.05)
        running = [j.split()[0] for j in slurm.squeue() if j.endswith("RUNNING")]
        assert len(running) == 2, slurm.squeue()
        kept = len(committed_batches(store))
        res = slurm.run("scancel", running[0])  # one worker's job, batches in flight
        assert res.returncode == 0, res.stderr
        out = finish(proc, 150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kept < N // BATCH, "the run finished before a job was cancelled"
    assert proc.returncode == 0, out
    assert f"{N} ok, 0 failed" in out, out
    wait_for(lambda: not slurm.squeue(), 30, "every SLURM job to end", poll=0.2)

    reference = clean_reference(source, tmp_path / "reference", size=SIZE)
    figures = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL SLURM: 2 jobs, job {running[0]} cancelled after {kept} of {N // BATCH} "
            f"batches committed; rows {figures['rows']}/{N}, lost 0, duplicated 0; "
            f"no job left; {seconds:.1f} s"
        )


def test_slurm_jobs_that_never_start_are_named_then_time_out(slurm, prefect_server, tmp_path):
    source, store = tmp_path / "source", tmp_path / "store"
    write_phantoms(source, 4)
    spec = slurm_spec(tmp_path, queue="closed", timeout_s=6)  # a partition that is DOWN
    args = ["run", str(source), "--store", str(store), "--cluster", str(spec)]
    proc = xray_popen(*args, env=run_env(slurm, prefect_server), cwd=tmp_path)
    try:
        out = finish(proc, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "waiting for workers: 2 SLURM jobs pending (job ids " in out, out
    assert "no Dask worker joined within 6 s" in out and "worker_timeout_s" in out, out
    wait_for(lambda: not slurm.squeue(), 30, "the pending jobs to be cancelled", poll=0.2)
