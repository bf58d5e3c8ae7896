"""The workers of a cluster a run starts: glibc's malloc settings, and Dask's
housekeeping at the project's intervals and log lengths unless the user's Dask
config says otherwise."""

from __future__ import annotations

import os

import dask


def _worker_view(dask_worker) -> dict:
    import dask

    return {
        "tick_s": dask_worker._tick_interval,
        "config": {k: dask.config.get(k) for k in _keys()},
        "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def _keys() -> list[str]:
    from flows.cluster import HOUSEKEEPING

    return list(HOUSEKEEPING)


def _scheduler_view(dask_scheduler) -> dict:
    (stream,) = dask_scheduler.stream_comms.values()  # to the one worker
    return {"tick_s": dask_scheduler._tick_interval, "kept": len(stream.recent_message_log)}


def _cluster_view(user: dict) -> tuple[dict, dict, dict]:
    from flows.cluster import DaskCluster, local_cluster, resolve_cluster

    spec = resolve_cluster(local_cluster(1, dashboard_address=":0"))
    with dask.config.set(user), DaskCluster(spec) as cluster:
        client = cluster.client()
        for i in range(150):  # a batch each, one after the other, as a run's waves
            client.submit(len, [f"scan{i}-{j}.png" for j in range(32)], pure=False).result()
        (seen,) = client.run(_worker_view).values()
        scheduler = client.run_on_scheduler(_scheduler_view)
        scheduler["client_kept"] = len(client.scheduler_comm.recent_message_log)
        here = {k: dask.config.get(k) for k in _keys()}
    return seen, scheduler, here


def test_workers_get_the_quiet_intervals_and_the_malloc_settings():
    from flows.cluster import HOUSEKEEPING, WORKER_MALLOC

    seen, scheduler, here = _cluster_view({})
    assert seen["config"] == HOUSEKEEPING
    assert seen["tick_s"] == 0.5 and scheduler["tick_s"] == 0.5
    # The streams to the worker and from the client keep the last 100 of the
    # 150 tasks they sent, not all.
    assert scheduler["kept"] == 100 and scheduler["client_kept"] == 100
    assert seen["malloc"] == WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]
    # Only the cluster's start saw them: this process's config is as it was.
    assert here["distributed.admin.tick.interval"] == "20ms"


def test_a_value_the_user_set_wins():
    user = {
        "distributed.admin.tick.interval": "50ms",
        "distributed.worker.profile.interval": "7ms",
        "distributed.admin.low-level-log-length": 120,
    }
    seen, scheduler, _ = _cluster_view(user)
    assert seen["config"]["distributed.admin.tick.interval"] == "50ms"
    assert seen["config"]["distributed.worker.profile.interval"] == "7ms"
    assert seen["tick_s"] == 0.05 and scheduler["tick_s"] == 0.05
    assert seen["config"]["distributed.worker.memory.monitor-interval"] == "500ms"
    assert scheduler["kept"] == 120 and scheduler["client_kept"] == 120


def test_a_client_of_a_running_scheduler_keeps_a_short_log_too():
    from distributed import LocalCluster

    from flows.cluster import DaskCluster, resolve_cluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as theirs:
        with DaskCluster(resolve_cluster(theirs.scheduler_address)) as cluster:
            client = cluster.client()
            for i in range(150):
                client.submit(len, [f"scan{i}-{j}.png" for j in range(32)], pure=False).result()
            assert len(client.scheduler_comm.recent_message_log) == 100
