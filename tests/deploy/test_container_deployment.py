"""A Prefect worker in a container from the project image runs a deployment of
deploy/prefect.yaml: the host's ``prefect server``, the image's own command (a
process worker polling the ``xray-process`` pool) in a container on the host's
network, ``prefect deployment run`` on the host. The flow run runs inside the
container (its working directory, /opt/xray-pipeline, is the image's; the host has
none and starts no worker), writes the store mounted at its own path, and ends
Completed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import assert_store_complete, clean_reference, wait_for, write_phantoms
from servers import free_port, prefect_env, prefect_server_process

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: The image's XRAY_PIPELINE_HOME (deploy/Dockerfile): the deployment's working directory.
IMAGE_HOME = "/opt/xray-pipeline"
N, SOURCE_SIZE, SIZE = 12, 256, 128


@pytest.fixture(scope="module")
def prefect_server_env(tmp_path_factory):
    """A real ``prefect server start`` on the host's loopback, as tests/deploy/test_deploy.py."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = prefect_env(home, port)
    with prefect_server_process(env, port, home / "server.log"):
        yield env


def prefect(env, *args: str) -> str:
    res = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_a_worker_container_runs_the_scheduled_deployment(
    tmp_path, containers, prefect_server_env, capsys
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert not Path(IMAGE_HOME).exists(), f"{IMAGE_HOME} on the host: the proof below needs none"
    t0 = time.monotonic()
    source, stores = tmp_path / "source", tmp_path / "stores"
    stores.mkdir()
    write_phantoms(source, N, size=SOURCE_SIZE)
    store = stores / "store"
    env = {
        **prefect_server_env,
        "XRAY_PIPELINE_HOME": IMAGE_HOME,
        "XRAY_SOURCE": str(source),
        "XRAY_STORE": str(store),
        "XRAY_DASK_CLUSTER": "local",
    }
    prefect(env, "work-pool", "create", "xray-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--name",
            "scheduled")  # fmt: skip
    worker = containers.start(
        "prefect-worker",
        read=(source,),
        write=(stores,),
        as_host_user=True,
        env={
            key: prefect_server_env[key]
            for key in (
                "PREFECT_API_URL",
                "PREFECT_WORKER_QUERY_SECONDS",
                "PREFECT_WORKER_PREFETCH_SECONDS",
            )
        },  # fmt: skip
    )
    out = prefect(env, "deployment", "run", "preprocess-dataset/scheduled", "--param",
                  f"size={SIZE}", "--param", "batch_size=4")  # fmt: skip
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("preprocess-dataset/scheduled")

            def finished():
                runs = client.read_flow_runs()
                runs = [r for r in runs if r.deployment_id == deployment.id]
                return [r for r in runs if r.state and r.state.is_final()]

            try:
                runs = wait_for(finished, 300, "the deployment's flow run to finish", poll=2)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{out}\n{containers.logs(worker)}") from None
            workers = client.read_workers_for_work_pool("xray-process")
    log = containers.logs(worker, lines=200)
    assert len(runs) == 1 and runs[0].state.is_completed(), (runs, log)
    # The worker that ran it is the container's: its name is in the container's log.
    ran_by = runs[0].labels["prefect.worker.name"]
    assert f"Worker {ran_by!r} started" in log, (ran_by, log)
    assert [w.name for w in workers] == [ran_by]
    assert (store / "metadata.delta").is_dir(), f"no store at {store} on the host (the mount?)"
    reference = clean_reference(source, tmp_path / "reference", size=SIZE)
    figures = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nCONTAINERS prefect worker: flow run {runs[0].name} of preprocess-dataset/"
            f"scheduled {runs[0].state.name} by {ran_by!r} in container "
            f"{worker}; rows {figures['rows']}/{N} ok, pixels equal a run without "
            f"containers, verify clean; {seconds:.1f} s"
        )
