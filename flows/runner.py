"""Where a run's work happens: the Dask cluster and the Prefect API.

This module builds things and never imports a flow. Nothing here runs at import
time: a cluster spec is read, and Dask configured, when a run starts.

Prefect sees few coarse units (one task run per shard of scans, in the flow
process); the scans themselves are plain Dask work on the cluster's workers,
which import ``xraycore`` and never Prefect.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WORKER_MALLOC",
    "ClusterSpec",
    "DaskCluster",
    "load_cluster_spec",
    "prefect_api",
    "resolve_cluster",
    "run_flow",
]

DEFAULT_CLUSTER = "distributed.LocalCluster"

#: How long a run waits for its first Dask worker (a queued SLURM job may wait
#: long); ``worker_timeout_s`` in a cluster spec or XRAY_WORKER_TIMEOUT_S changes it.
DEFAULT_WORKER_TIMEOUT_S = 600.0

logger = logging.getLogger(__name__)

# Per-scan temporaries are ~4-16 MB: with glibc's defaults they are mmap'ed and
# unmapped on every call, and the page faults cost ~30% of a worker's time
# (shared/MEASUREMENTS.md; measured again in benchmarks/bench_flow.py).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "268435456"}

_ADDRESS_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "inproc://")


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
    ``address`` or ``cluster_class`` + ``cluster_kwargs`` (+ ``adapt_kwargs``,
    ``worker_timeout_s``)."""
    import yaml

    path = Path(spec)
    if not path.suffix:
        candidates = [d / f"{spec}.yaml" for d in cluster_spec_dirs()]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = sorted({p.stem for d in cluster_spec_dirs() for p in d.glob("*.yaml")})
        raise ValueError(f"cluster spec {spec!r} not found (known: {known}, or a YAML path)")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {"address", "cluster_class", "cluster_kwargs", "adapt_kwargs", "worker_timeout_s"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    if bool(data.get("address")) == bool(data.get("cluster_class")):
        raise ValueError(f"{path}: give exactly one of 'address' or 'cluster_class'")
    for key in ("cluster_kwargs", "adapt_kwargs"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{path}: {key} must be a mapping")
    if "worker_timeout_s" in data:
        _positive_seconds(data["worker_timeout_s"], f"{path}: worker_timeout_s")
    return data


def _positive_seconds(value: Any, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class ClusterSpec:
    """An existing scheduler ``address``, or a ``cluster_class`` to start with
    ``cluster_kwargs`` (and ``adapt_kwargs`` for an adaptive cluster); a run
    fails when no worker joined within ``worker_timeout_s``."""

    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    adapt_kwargs: dict[str, Any] | None = None
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S


def resolve_cluster(
    *,
    cluster: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
) -> ClusterSpec:
    """The cluster a run uses: ``scheduler`` (an address), else ``cluster_class``,
    else the spec named by ``cluster`` or ``XRAY_DASK_CLUSTER``, else a
    LocalCluster of one single-threaded worker process per core (OpenCV and
    NumPy already vectorise within a scan). The wait for the first worker is
    XRAY_WORKER_TIMEOUT_S, else the spec's ``worker_timeout_s``, else 600 s."""
    cluster = cluster or os.environ.get("XRAY_DASK_CLUSTER")
    adapt_kwargs = None
    worker_timeout_s: Any = DEFAULT_WORKER_TIMEOUT_S
    if cluster and not (scheduler or cluster_class):
        spec = load_cluster_spec(cluster)
        scheduler = spec.get("address")
        cluster_class = spec.get("cluster_class")
        cluster_kwargs = {**spec.get("cluster_kwargs", {}), **(cluster_kwargs or {})}
        adapt_kwargs = spec.get("adapt_kwargs")
        worker_timeout_s = spec.get("worker_timeout_s", worker_timeout_s)
    if os.environ.get("XRAY_WORKER_TIMEOUT_S"):
        worker_timeout_s = _positive_seconds(
            os.environ["XRAY_WORKER_TIMEOUT_S"], "XRAY_WORKER_TIMEOUT_S"
        )
    worker_timeout_s = _positive_seconds(worker_timeout_s, "worker_timeout_s")
    if scheduler:
        if not scheduler.startswith(_ADDRESS_SCHEMES):
            raise ValueError(
                f"--scheduler must be an address like tcp://host:8786, got {scheduler!r}"
            )
        return ClusterSpec(address=scheduler, worker_timeout_s=worker_timeout_s)
    kwargs = dict(cluster_kwargs or {})
    cls = cluster_class or DEFAULT_CLUSTER
    if cls == DEFAULT_CLUSTER:
        kwargs.setdefault("n_workers", workers or os.cpu_count() or 1)
        kwargs.setdefault("threads_per_worker", 1)
        kwargs.setdefault("processes", True)
        kwargs.setdefault("dashboard_address", ":0")
    elif workers:
        kwargs.setdefault("n_workers", workers)
    _import_class(cls)  # refuse a class that cannot be imported before the run starts
    return ClusterSpec(
        cluster_class=cls,
        cluster_kwargs=kwargs,
        adapt_kwargs=adapt_kwargs,
        worker_timeout_s=worker_timeout_s,
    )


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cluster class {path!r} cannot be imported: {exc}") from exc


class DaskCluster:
    """A Dask cluster and its client, started in a background thread.

    Starting returns at once, so a flow lists and plans while the workers come
    up; :meth:`client` waits for them, and for the first worker (saying what it
    waits for: a batch system's jobs may queue for long). Usable as a context manager that closes
    the client (and the cluster, when it started one).
    """

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self._client = None
        self._cluster = None
        self._error: BaseException | None = None
        self._worker_seen = False
        self._thread = threading.Thread(target=self._start, name="dask-cluster-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            import dask
            from distributed import Client

            if self.spec.address:
                self._client = Client(self.spec.address, set_as_default=False, timeout=60)
                return
            cls = _import_class(self.spec.cluster_class or DEFAULT_CLUSTER)
            key = "distributed.nanny.pre-spawn-environ"
            environ = {**(dask.config.get(key, default={}) or {}), **WORKER_MALLOC}
            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ to 64 KiB for the workers it
            # spawns; glibc reads it at process start, so it is set before spawning.
            with dask.config.set({key: environ}):
                self._cluster = cls(**self.spec.cluster_kwargs)
            if self.spec.adapt_kwargs:
                self._cluster.adapt(**self.spec.adapt_kwargs)
            self._client = Client(self._cluster, set_as_default=False)
        except BaseException as exc:  # handed to the caller of client()
            self._error = exc

    def client(self, timeout: float = 600):
        """The ``distributed.Client``, once the cluster is up and has a worker."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the Dask cluster did not start within {timeout:.0f} s")
        if self._error is not None:
            raise RuntimeError(
                f"the Dask cluster did not start: {type(self._error).__name__}: {self._error}"
            ) from self._error
        if not self._worker_seen:
            self._wait_for_first_worker(self.spec.worker_timeout_s)
            self._worker_seen = True
        return self._client

    def _wait_for_first_worker(self, timeout: float, *, say_every_s: float = 30.0) -> None:
        """Return once a worker has joined; say what is pending while none has.

        Raises TimeoutError after ``timeout`` seconds without one.
        """
        started, said, last = time.monotonic(), -say_every_s, None
        while not self._client.scheduler_info(n_workers=-1)["workers"]:
            waited = time.monotonic() - started
            pending = self._pending()
            if waited >= timeout:
                raise TimeoutError(
                    f"no Dask worker joined within {timeout:.0f} s ({pending}); raise "
                    "worker_timeout_s in the cluster spec or XRAY_WORKER_TIMEOUT_S to wait longer"
                )
            if pending != last or waited - said >= say_every_s:
                _say(f"waiting for workers: {pending}", pending=pending, waited_s=waited)
                said, last = waited, pending
            time.sleep(0.5)

    def _pending(self) -> str:
        """What the cluster waits for, in the batch system's words where it has one."""
        jobs = getattr(self._cluster, "workers", None)
        if self._cluster is not None and hasattr(self._cluster, "job_cls") and jobs is not None:
            kind = type(self._cluster).__name__.removesuffix("Cluster") or "batch"
            ids = [str(j.job_id) for j in jobs.values() if getattr(j, "job_id", None)]
            where = f" (job ids {', '.join(ids)})" if ids else ""
            return f"{len(jobs)} {kind} jobs pending{where}"
        if self.spec.address:
            return f"none has connected to the scheduler at {self.spec.address} yet"
        return "the cluster has started none yet"

    @property
    def dashboard_link(self) -> str | None:
        try:
            return self.client().dashboard_link
        except Exception:  # no dashboard (bokeh absent, or disabled)
            return None

    @property
    def workers(self) -> int:
        return len(self.client().scheduler_info(n_workers=-1)["workers"])

    def close(self) -> None:
        self._thread.join()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        with contextlib.suppress(Exception):
            if self._cluster is not None:
                self._cluster.close()

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _say(message: str, **fields: Any) -> None:
    """A line for the terminal (a WARNING: the console shows those) and the run's log."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().warning(message)
    except MissingContextError:  # outside a flow run: a plain script or notebook
        logger.warning(message)
    from flows.progress import notify

    notify("workers_pending", message=message, **fields)


@contextlib.contextmanager
def prefect_api():
    """Make sure the flow talks to one Prefect API.

    With PREFECT_API_URL set (a server, Prefect Cloud) nothing is done. Otherwise
    a temporary local API server is started and its URL exported, and flow-run
    heartbeats are turned off for it: they feed a server's zombie-run detection,
    which a server that ends with this process never runs, and Prefect joins the
    heartbeat thread, which sleeps in 1 s steps, at the end of every flow run
    (0.5 s on average, 7% of a 512-scan run; docs/benchmarks.md).
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if os.environ.get("PREFECT_API_URL"):
        # Prefect reads its settings when it is first imported: a URL exported
        # after that import must be handed over explicitly.
        with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            yield os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        local = {PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with temporary_settings(local):
            yield server.api_url
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)  # deliver the run's events before the API goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def run_flow(flow, **params: Any) -> Any:
    """Call ``flow(**params)`` against one Prefect API (see :func:`prefect_api`),
    after refusing credentials in ``storage_options`` (flow parameters are
    recorded by Prefect)."""
    from xraycore.storage import refuse_credentials

    refuse_credentials(params.get("storage_options"), "storage_options")
    with prefect_api():
        return flow(**params)
