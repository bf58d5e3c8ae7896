"""Run the flows from Python or the CLI: a Dask task runner and a Prefect API.

Prefect sees few coarse units (one task per shard of 64 scans); Dask runs them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any

DEFAULT_CLUSTER = "distributed.LocalCluster"


def cluster_spec_dirs() -> list[Path]:
    """Where named cluster specs are looked up, first match wins."""
    dirs = [os.environ.get("XRAY_CLUSTER_SPECS"), os.environ.get("XRAY_PIPELINE_HOME")]
    found = [
        Path(d) if i == 0 else Path(d) / "deploy" / "clusters" for i, d in enumerate(dirs) if d
    ]
    found.append(Path(__file__).resolve().parents[1] / "deploy" / "clusters")  # a checkout
    found.append(Path.cwd() / "deploy" / "clusters")
    return found


def load_cluster_spec(spec: str) -> dict[str, Any]:
    """Read a Dask cluster spec: a name in ``deploy/clusters`` (``local``,
    ``existing``, ``kubernetes``, ``slurm``) or a path to a YAML file with
    ``address`` or ``cluster_class`` + ``cluster_kwargs`` (+ ``adapt_kwargs``)."""
    import yaml

    path = Path(spec)
    if not path.suffix:
        candidates = [d / f"{spec}.yaml" for d in cluster_spec_dirs()]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = sorted({p.stem for d in cluster_spec_dirs() for p in d.glob("*.yaml")})
        raise ValueError(f"cluster spec {spec!r} not found (known: {known}, or a YAML path)")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {"address", "cluster_class", "cluster_kwargs", "adapt_kwargs"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    if bool(data.get("address")) == bool(data.get("cluster_class")):
        raise ValueError(f"{path}: give exactly one of 'address' or 'cluster_class'")
    for key in ("cluster_kwargs", "adapt_kwargs"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{path}: {key} must be a mapping")
    return data


def task_runner(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    adapt_kwargs: dict[str, Any] | None = None,
    cluster: str | None = None,
):
    """A prefect-dask ``DaskTaskRunner``: an existing scheduler address, or a
    cluster class (LocalCluster by default, one single-threaded worker process
    per core, since OpenCV and NumPy are already vectorised per scan)."""
    from prefect_dask import DaskTaskRunner

    cluster = cluster or os.environ.get("XRAY_DASK_CLUSTER")
    if cluster and not (scheduler or cluster_class):
        spec = load_cluster_spec(cluster)
        scheduler = spec.get("address")
        cluster_class = spec.get("cluster_class")
        cluster_kwargs = {**spec.get("cluster_kwargs", {}), **(cluster_kwargs or {})}
        adapt_kwargs = spec.get("adapt_kwargs") or adapt_kwargs
    if scheduler:
        if not scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")):
            raise ValueError(
                f"--scheduler must be an address like tcp://host:8786, got {scheduler!r}"
            )
        return DaskTaskRunner(address=scheduler)
    kwargs = dict(cluster_kwargs or {})
    cls = cluster_class or DEFAULT_CLUSTER
    if cls == DEFAULT_CLUSTER:
        _worker_malloc_settings()
        kwargs.setdefault("n_workers", workers or os.cpu_count() or 1)
        kwargs.setdefault("threads_per_worker", 1)
        kwargs.setdefault("processes", True)
        kwargs.setdefault("dashboard_address", ":0")
    module, _, name = cls.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cluster class {cls!r} cannot be imported: {exc}") from exc
    return DaskTaskRunner(cluster_class=cls, cluster_kwargs=kwargs, adapt_kwargs=adapt_kwargs)


# Per-scan temporaries are ~4-16 MB: with glibc's defaults they are mmap'ed and
# unmapped on every call, and the page faults cost ~30% of a worker's time
# (shared/MEASUREMENTS.md; measured again in benchmarks/bench_flow.py).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def _worker_malloc_settings() -> None:
    """Have LocalCluster nannies start workers with :data:`WORKER_MALLOC`
    (Dask's own default sets MALLOC_TRIM_THRESHOLD_ to 64 KiB)."""
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    dask.config.set({key: {**(dask.config.get(key, default={}) or {}), **WORKER_MALLOC}})


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


def run_flow(
    flow,
    *,
    cluster: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
    **params: Any,
) -> Any:
    """Run a flow on a Dask task runner (see :func:`task_runner`) against one
    Prefect API (see :func:`prefect_api`); returns the flow's result."""
    runner = task_runner(
        scheduler=scheduler,
        workers=workers,
        cluster_class=cluster_class,
        cluster_kwargs=cluster_kwargs,
        cluster=cluster,
    )
    with prefect_api():
        return flow.with_options(task_runner=runner)(**params)


def run_preprocess(**kwargs: Any) -> dict[str, Any]:
    """``preprocess_dataset`` through :func:`run_flow`; returns the run summary."""
    from flows.preprocess import preprocess_dataset

    return run_flow(preprocess_dataset, **kwargs)


def run_classify(**kwargs: Any) -> dict[str, Any]:
    """``classify_store`` through :func:`run_flow`; returns its result."""
    from flows.classify import classify_store

    return run_flow(classify_store, **kwargs)
