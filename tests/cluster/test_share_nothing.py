"""Drill: hosts that share nothing. The flow (`xray run`), the Dask scheduler, two
`dask worker` hosts, S3 (moto) and the Prefect API each in their own network,
PID, mount and UTS namespaces: own address, own host name, own /tmp, no view of
the test's folders. Source and store are on S3 only.

1. A worker host dies whole (every process at once) inside a batch: the run
   completes, every input exactly once, pixels equal a clean run's, verify clean.
2. The flow's host dies mid-run: a rerun from another host waits for the lease
   to go stale (the dead holder's pid means nothing on another host), takes it
   over and completes the store.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from harness import AWS_ENV, write_phantoms

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
PY = sys.executable
BIN = Path(PY).parent
SOURCE_SIZE, SIZE, N = 512, 128, 64
# 16 batches: the flow's host is killed after its committer's first commit, with
# most of the run still to do (the flow commits each batch once its result is back).
BATCH = 4
TTL_S = 6


@pytest.fixture
def servers(network):
    """S3, a scheduler, the Prefect API and two workers started; two flow hosts
    made. Returns (hosts by name, the runs' environment, the scheduler address)."""
    names = ["s3", "scheduler", "prefect", "worker-1", "worker-2", "flow-a", "flow-b"]
    hosts = {name: network.add_host(name) for name in names}
    s3, scheduler, prefect = hosts["s3"], hosts["scheduler"], hosts["prefect"]
    env = {
        **AWS_ENV,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": f"http://{s3.address}:5000",
        "PREFECT_API_URL": f"http://{prefect.address}:4200/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": "/tmp/prefect",
    }
    s3.start(PY, "-m", "moto.server", "-H", s3.address, "-p", "5000", env=env)
    scheduler.start(
        str(BIN / "dask"), "scheduler", "--host", scheduler.address, "--port", "8786",
        "--no-dashboard", env=env,
    )  # fmt: skip
    prefect.start(
        str(BIN / "prefect"), "server", "start", "--host", prefect.address, "--port", "4200",
        "--no-ui", env=env,
    )  # fmt: skip
    address = f"tcp://{scheduler.address}:8786"
    for name in ("worker-1", "worker-2"):
        worker = hosts[name]
        worker.start(
            str(BIN / "dask"), "worker", address, "--host", worker.address, "--nthreads", "1",
            "--no-dashboard", "--local-directory", "/tmp/dask", env=env,
        )  # fmt: skip
    return hosts, env, address


def hub(network, env, *args: str, timeout: float = 120) -> dict:
    res = network.in_hub(PY, str(HERE / "hub_steps.py"), *args, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def xray_on(host, env, *args: str, ttl_s: float = 120):
    """``xray run`` as the flow host's first process (stdout piped)."""
    return host.start(
        PY, str(HERE / "xray_short_lease.py"), "run", *args,
        env={**env, "XRAY_TEST_LEASE_TTL_S": str(ttl_s)}, stdout=-1, stderr=-2, text=True,
    )  # fmt: skip


def local_data(host) -> list[str]:
    """Scans or store files a host's private /tmp holds (none may)."""
    found = [p for p in host.tmp.rglob("*") if p.suffix in (".png", ".parquet", ".zarr")]
    found += [p for p in host.tmp.rglob("zarr.json")]
    return [str(p.relative_to(host.tmp)) for p in found]


def test_hosts_that_share_nothing(network, servers, tmp_path, capsys):
    t0 = time.monotonic()
    hosts, env, scheduler = servers
    folder = tmp_path / "source"  # on the test's disk only: uploaded, then S3 is the source
    write_phantoms(folder, N, size=SOURCE_SIZE)
    # moto listens some time after its process starts (once, in a clone without
    # ../shared, the upload came first and was refused): wait for its port.
    s3 = env["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    wait = (
        "import socket, sys, time\n"
        "deadline = time.monotonic() + 60\n"
        "while True:\n"
        "    try:\n"
        "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close(); break\n"
        "    except OSError:\n"
        "        assert time.monotonic() < deadline, 'S3 server never listened'\n"
        "        time.sleep(0.2)\n"
    )
    res = network.in_hub(PY, "-c", wait, s3[0], s3[1], env=env, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    hub(network, env, "upload", str(folder), "s3://drill/source")
    hub(network, env, "health", f"{env['PREFECT_API_URL']}/health")
    seen = hub(network, env, "probe", scheduler, str(folder))
    assert sorted(name for name, _, _ in seen.values()) == ["worker-1", "worker-2"], seen
    assert not any(sees for _, _, sees in seen.values()), f"a worker sees {folder}: {seen}"
    args = ["s3://drill/source", "--size", str(SIZE), "--batch-size", str(BATCH)]
    args += ["--scheduler", scheduler]

    # 1. A worker host lost whole inside a batch.
    store = "s3://drill/store-worker-lost"
    run = xray_on(hosts["flow-a"], env, *args, "--store", store)
    inside = hub(network, env, "in-batch", scheduler, hosts["worker-1"].address, store)
    hosts["worker-1"].crash()
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    assert f"{N} ok, 0 failed" in out, out
    first = hub(network, env, "check", store, str(folder), str(SIZE), timeout=180)
    assert "failed" not in first, first["failed"]
    t1 = time.monotonic()
    for name in ("flow-a", "worker-1", "worker-2"):
        assert local_data(hosts[name]) == [], (name, local_data(hosts[name]))

    # 2. The flow's host lost mid-run; a rerun from another host takes the lease over.
    store = "s3://drill/store-flow-lost"
    run = xray_on(hosts["flow-a"], env, *args, "--store", store, ttl_s=TTL_S)
    hub(network, env, "batches", store, "1")  # polls every 10 ms from the hub
    hosts["flow-a"].crash()
    done = hub(network, env, "batches", store)["batches"]  # one in flight may still land
    dead = hub(network, env, "lease", store)
    assert dead is not None and dead["host"] == "flow-a", dead
    assert done < N // BATCH, "the run finished before its host was killed"
    rerun = xray_on(hosts["flow-b"], env, *args, "--store", store, "--wait", ttl_s=TTL_S)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert f"took over the lease of run {dead['run_id']}" in out and "not renewed" in out, out
    assert "0 failed" in out, out
    second = hub(network, env, "check", store, str(folder), str(SIZE), timeout=180)
    assert hub(network, env, "lease", store) is None  # released by the rerun
    seconds = time.monotonic() - t0
    found = ""
    if "failed" in second:
        found = f"; FOUND: {second['failed']}"
    with capsys.disabled():
        print(
            f"\nDRILL share nothing, worker host lost inside batch {inside['tasks'][0]}: rows "
            f"{first['rows']}/{N}, lost 0, duplicated 0; {t1 - t0:.1f} s"
            f"\nDRILL share nothing, flow host (pid {dead['pid']} on {dead['host']}) lost "
            f"with {done} of {N // BATCH} batches committed, rerun on flow-b took the lease "
            f"over: rows "
            f"{second.get('rows', N)}/{N}, lost 0, duplicated 0; {seconds - (t1 - t0):.1f} s"
            f"{found}"
        )
    # Found by this drill, fixed in Storage (S3 listings are never cached): the
    # rerun's compaction missed the parts its workers wrote after planning.
    assert "failed" not in second, second["failed"]
