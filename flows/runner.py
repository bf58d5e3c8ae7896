"""Run the flows from Python or the CLI: a Dask task runner and a Prefect API.

Prefect sees few coarse units (one task per shard of 64 scans); Dask runs them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

DEFAULT_CLUSTER = "distributed.LocalCluster"


def task_runner(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
):
    """A prefect-dask ``DaskTaskRunner``: an existing scheduler address, or a
    cluster class (LocalCluster by default, one single-threaded worker process
    per core, since OpenCV and NumPy are already vectorised per scan)."""
    from prefect_dask import DaskTaskRunner

    if scheduler:
        if not scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")):
            raise ValueError(
                f"--scheduler must be an address like tcp://host:8786, got {scheduler!r}"
            )
        return DaskTaskRunner(address=scheduler)
    kwargs = dict(cluster_kwargs or {})
    cls = cluster_class or DEFAULT_CLUSTER
    if cls == DEFAULT_CLUSTER:
        kwargs.setdefault("n_workers", workers or os.cpu_count() or 1)
        kwargs.setdefault("threads_per_worker", 1)
        kwargs.setdefault("processes", True)
        kwargs.setdefault("dashboard_address", ":0")
    module, _, name = cls.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cluster class {cls!r} cannot be imported: {exc}") from exc
    return DaskTaskRunner(cluster_class=cls, cluster_kwargs=kwargs)


@contextlib.contextmanager
def prefect_api():
    """Make sure flow *and* Dask workers talk to one Prefect API.

    With PREFECT_API_URL set (a server, Prefect Cloud) nothing is done. Otherwise
    a temporary local API server is started and its URL exported, so that worker
    processes inherit it instead of each starting a server of its own.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)  # deliver the run's events before the API goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def run_preprocess(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run ``preprocess_dataset`` with a Dask task runner; returns the summary."""
    from flows.preprocess import preprocess_dataset

    runner = task_runner(
        scheduler=scheduler,
        workers=workers,
        cluster_class=cluster_class,
        cluster_kwargs=cluster_kwargs,
    )
    with prefect_api():
        return preprocess_dataset.with_options(task_runner=runner)(**params)


def run_classify(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run ``classify_store`` with a Dask task runner; returns its result."""
    from flows.classify import classify_store

    runner = task_runner(
        scheduler=scheduler,
        workers=workers,
        cluster_class=cluster_class,
        cluster_kwargs=cluster_kwargs,
    )
    with prefect_api():
        return classify_store.with_options(task_runner=runner)(**params)
