"""Deployments on a real `prefect server`: schedule, trigger, a process worker,
a scheduled-deployment run, and the committed-batch event starting classification.
Plus every Dask cluster spec in deploy/clusters."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from onnx_models import mean_model
from servers import free_port, prefect_env, prefect_server_process

from flows.cluster import load_cluster_spec, local_cluster, resolve_cluster
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = prefect_env(home, port)
    # Not healthy in 180 s: a setup error with the server's log.
    with prefect_server_process(env, port, home / "server.log"):
        yield env


def _prefect(env, *args, timeout=300) -> str:
    res = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@contextlib.contextmanager
def _client(env):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            yield client


def _wait_for_runs(client, deployment_id, *, count=1, timeout=300):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        final = [r for r in runs if r.state and r.state.is_final()]
        if len(final) >= count:
            return final
        time.sleep(2)
    raise AssertionError(f"no finished run of {deployment_id} within {timeout}s: {runs}")


def test_deploy_schedule_trigger_worker_and_event(server_env, tmp_path):
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.png"), phantom_chest(128, seed=i))
    store = tmp_path / "store"
    model = mean_model(tmp_path / "mean.onnx", size=256)
    env = {
        **server_env,
        "XRAY_PIPELINE_HOME": str(ROOT),
        "XRAY_SOURCE": str(src),
        "XRAY_STORE": str(store),
        "XRAY_MODEL": model,
        "XRAY_DASK_CLUSTER": "local",
    }

    _prefect(env, "work-pool", "create", "xray-process", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")

    with _client(env) as client:
        scheduled = client.read_deployment_by_name("preprocess-dataset/scheduled")
        assert [s.schedule.cron for s in scheduled.schedules] == ["0 2 * * *"]
        assert scheduled.parameters["source"] == str(src)
        assert scheduled.parameters["cluster"] == "local"  # the cluster is one parameter
        assert scheduled.work_pool_name == "xray-process"
        assert scheduled.global_concurrency_limit.limit == 1  # one run per store at a time
        assert str(scheduled.concurrency_options.collision_strategy).endswith("ENQUEUE")
        on_commit = client.read_deployment_by_name("classify-store/on-commit")
        assert on_commit.global_concurrency_limit.limit == 1  # one scoring run at a time
        assert str(on_commit.concurrency_options.collision_strategy).endswith("ENQUEUE")
        automations = client.read_automations()
        linked = [
            a
            for a in automations
            if any(getattr(act, "deployment_id", None) == on_commit.id for act in a.actions)
        ]
        expects = {e: a.trigger for a in linked for e in a.trigger.expect}
        # Batched: one run per 50 committed batches, and one per committed run.
        assert set(expects) == {"xray.batch.committed", "xray.run.committed"}, linked
        assert expects["xray.batch.committed"].threshold == 50

        worker = subprocess.Popen(
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                "xray-process",
                "--type",
                "process",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _prefect(
                env,
                "deployment",
                "run",
                "preprocess-dataset/scheduled",
                "--param",
                "size=128",
                "--param",
                "batch_size=4",
            )
            runs = _wait_for_runs(client, scheduled.id, timeout=300)
            assert runs[0].state.is_completed(), runs[0].state
            meta = ScanStore.open(str(store)).read_metadata()
            assert meta.num_rows == 6 and set(meta.column("status").to_pylist()) == {"ok"}

            # Two batches were committed (below the threshold), then the run: one
            # classify-store run scored all six rows.
            cruns = _wait_for_runs(client, on_commit.id, count=1, timeout=300)
            assert all(r.state.is_completed() for r in cruns), [r.state for r in cruns]
            deadline = time.time() + 60
            while time.time() < deadline:
                preds = ScanStore.open(str(store)).read_predictions()
                if preds is not None and preds.num_rows == 6:
                    break
                time.sleep(2)
            time.sleep(5)  # no second run follows for the same events
            assert len(_wait_for_runs(client, on_commit.id, count=1)) == 1
            assert preds is not None and preds.num_rows == 6
        finally:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)


@pytest.mark.parametrize("name", ["local", "existing", "kubernetes", "slurm"])
def test_cluster_specs_parse_and_build_runner_arguments(name):
    spec = load_cluster_spec(name)
    if name == "existing":
        assert spec["address"].startswith("tcp://")
        assert resolve_cluster(cluster=name).address == spec["address"]
        return
    module, _, cls = spec["cluster_class"].rpartition(".")
    assert module and cls and isinstance(spec["cluster_kwargs"], dict)
    if name == "local":
        where = resolve_cluster(cluster=name)
        assert where.cluster_kwargs["threads_per_worker"] == 1
        assert where.cluster_kwargs["n_workers"] >= 1
    elif name == "kubernetes":
        assert spec["cluster_kwargs"]["n_workers"] >= 1 and spec["adapt_kwargs"]["maximum"] > 1
    else:
        assert {"cores", "memory", "walltime"} <= set(spec["cluster_kwargs"])
    try:
        __import__(module)
    except ImportError:
        with pytest.raises(ValueError, match="cannot be imported"):
            resolve_cluster(cluster=name)


def test_bad_cluster_specs(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_cluster_spec("mainframe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("address: tcp://x:1\ncluster_class: distributed.LocalCluster\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_cluster_spec(str(bad))
    bad.write_text("workers: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_cluster_spec(str(bad))
    assert json.dumps(load_cluster_spec("local"))  # plain data


def test_one_cluster_value_an_address_a_name_a_mapping_or_none(monkeypatch, tmp_path):
    assert resolve_cluster("tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    assert resolve_cluster({"address": "tls://h:8786"}).address == "tls://h:8786"
    mine = resolve_cluster(local_cluster(3, dashboard_address=":0"))
    assert mine.cluster_class == "distributed.LocalCluster"
    assert mine.cluster_kwargs["n_workers"] == 3 and mine.cluster_kwargs["threads_per_worker"] == 1
    adaptive = resolve_cluster(
        {
            "cluster_class": "distributed.LocalCluster",
            "cluster_kwargs": {"n_workers": 1},
            "adapt_kwargs": {"minimum": 1, "maximum": 4},
        }
    )
    assert adaptive.adapt_kwargs == {"minimum": 1, "maximum": 4}
    spec = tmp_path / "mine.yaml"
    spec.write_text("address: tcp://127.0.0.1:9999\n")
    assert resolve_cluster(str(spec)).address == "tcp://127.0.0.1:9999"
    monkeypatch.setenv("XRAY_DASK_CLUSTER", "existing")
    assert resolve_cluster(None).address == load_cluster_spec("existing")["address"]
    monkeypatch.delenv("XRAY_DASK_CLUSTER")
    default = resolve_cluster(None)
    assert default.cluster_class == "distributed.LocalCluster"
    assert default.cluster_kwargs["n_workers"] == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"address": "host:8786"}, "address must be like tcp://host:8786, got 'host:8786'"),
        ({"cluster_class": "x.Y", "address": "tcp://h:1"}, "exactly one"),
        ({"cluster_class": "distributed.LocalCluster", "workers": 2}, "unknown keys"),
        ({"cluster_class": "distributed.LocalCluster", "cluster_kwargs": [1]}, "must be a mapping"),
        ({"cluster_class": "no_such_module.Cluster"}, "cannot be imported"),
        (["tcp://h:1"], "a cluster spec must be a mapping, got list"),
        ("mainframe", "not found"),
    ],
)
def test_bad_cluster_values(cluster, message):
    with pytest.raises(ValueError, match=message):
        resolve_cluster(cluster)


def test_local_cluster_needs_a_worker():
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        local_cluster(0)
