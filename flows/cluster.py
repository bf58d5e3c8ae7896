"""Where a run's scans are processed: the Dask cluster.

A cluster is named by the flows' one ``cluster`` parameter (an address, a spec
in ``deploy/clusters``, a mapping) and resolved to a :class:`ClusterSpec`;
:class:`DaskCluster` starts it in the background while a flow lists and plans.
Nothing here runs at import time: a cluster spec is read, and Dask configured,
when a run starts.

Prefect sees few coarse units (one task run per batch of scans, in the flow
process); the scans themselves are plain Dask work on the cluster's workers,
which import ``xraycore`` and never Prefect.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.progress import notify

__all__ = [
    "DEFAULT_CLUSTER",
    "DEFAULT_WORKER_TIMEOUT_S",
    "HOUSEKEEPING",
    "WORKER_MALLOC",
    "ClusterSpec",
    "DaskCluster",
    "check_cluster_spec",
    "cluster_spec_dirs",
    "housekeeping",
    "load_cluster_spec",
    "local_cluster",
    "resolve_cluster",
    "shipped_defaults",
]

DEFAULT_CLUSTER = "distributed.LocalCluster"

# Per-scan temporaries are ~4-16 MB: with glibc's defaults they are mmap'ed and
# unmapped on every call, and the page faults cost ~30% of a worker's time
# (shared/MEASUREMENTS.md; measured again in benchmarks/bench_flow.py).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "268435456"}

#: Dask's housekeeping in a cluster a run starts (its scheduler, nannies and
#: workers), where the user's Dask config leaves distributed's default.
#:
#: - The intervals: the defaults wake every process 50 times a second to time
#:   its event loop, 10 times for the memory check and 100 times for the
#:   profiler; 8 idle workers used 14% of a core for it and their scheduler and
#:   nannies 4%, and 6% and 2% at these (``benchmarks/bench_nights.py --parts
#:   idle``). A blocked event loop is still reported after 3 s, a worker paused
#:   or restarted within half a second of crossing its memory limit, and the
#:   dashboard's profile keeps a sample every 0.1 s.
#: - The developers' logs: each batched stream keeps its last messages, and the
#:   scheduler and workers their last transitions and stimuli. The default of
#:   1,000 kept every batch's task (its inputs' names and labels, ~17 kB) in
#:   the flow process and its workers, for the first 1,000 batches of each
#:   worker: the flow's memory grew with the run. 100 keep a recent history.
HOUSEKEEPING = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.low-level-log-length": 100,
}

#: How long a run waits for its first Dask worker (a queued SLURM job may wait
#: long); ``worker_timeout_s`` in a cluster spec or XRAY_WORKER_TIMEOUT_S changes it.
DEFAULT_WORKER_TIMEOUT_S = 600.0

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
    ``address`` or ``cluster_class`` + ``cluster_kwargs`` (+ ``adapt_kwargs``)."""
    import yaml

    path = Path(spec)
    if not path.suffix:
        candidates = [d / f"{spec}.yaml" for d in cluster_spec_dirs()]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = sorted({p.stem for d in cluster_spec_dirs() for p in d.glob("*.yaml")})
        raise ValueError(
            f"cluster spec {spec!r} not found (known: {known}, a YAML path, or an address "
            "like tcp://host:8786)"
        )
    return check_cluster_spec(yaml.safe_load(path.read_text()) or {}, str(path))


def check_cluster_spec(data: Any, where: str = "cluster") -> dict[str, Any]:
    """``data`` if it is a cluster spec (the keys of a ``deploy/clusters`` file)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a cluster spec must be a mapping, got {type(data).__name__}")
    allowed = {"address", "cluster_class", "cluster_kwargs", "adapt_kwargs", "worker_timeout_s"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    if bool(data.get("address")) == bool(data.get("cluster_class")):
        raise ValueError(f"{where}: give exactly one of 'address' or 'cluster_class'")
    if data.get("address") and not str(data["address"]).startswith(_ADDRESS_SCHEMES):
        raise ValueError(f"{where}: address must be like tcp://host:8786, got {data['address']!r}")
    for key in ("cluster_kwargs", "adapt_kwargs"):
        if not isinstance(data.get(key) or {}, dict):
            raise ValueError(f"{where}: {key} must be a mapping")
    if "worker_timeout_s" in data:
        _positive_seconds(data["worker_timeout_s"], f"{where}: worker_timeout_s")
    return data


def _positive_seconds(value: Any, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


def local_cluster(workers: int, **cluster_kwargs: Any) -> dict[str, Any]:
    """The ``cluster`` value of a LocalCluster of ``workers`` processes."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    return {
        "cluster_class": DEFAULT_CLUSTER,
        "cluster_kwargs": {**cluster_kwargs, "n_workers": workers},
    }


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


def resolve_cluster(cluster: str | dict[str, Any] | None = None) -> ClusterSpec:
    """The cluster a run uses, from the flows' one ``cluster`` parameter.

    Parameters
    ----------
    cluster : str, dict or None
        A scheduler address (``tcp://host:8786``); the name of a spec in
        ``deploy/clusters`` (``local``, ``existing``, ``kubernetes``, ``slurm``)
        or a path to a YAML spec; a mapping with ``address``, or
        ``cluster_class`` + ``cluster_kwargs`` (+ ``adapt_kwargs``); None for
        the spec named by ``XRAY_DASK_CLUSTER``, else a LocalCluster.

    Returns
    -------
    spec : ClusterSpec
        A LocalCluster gets one single-threaded worker process per core unless
        told otherwise (OpenCV and NumPy already vectorise within a scan).
        The wait for the first worker is XRAY_WORKER_TIMEOUT_S, else the
        spec's ``worker_timeout_s``, else 600 s.
    """
    cluster = cluster or os.environ.get("XRAY_DASK_CLUSTER") or {"cluster_class": DEFAULT_CLUSTER}
    if isinstance(cluster, str) and cluster.startswith(_ADDRESS_SCHEMES):
        data: dict[str, Any] = {"address": cluster}
    elif isinstance(cluster, str):
        data = load_cluster_spec(cluster)
    else:
        data = check_cluster_spec(cluster)
    timeout = _positive_seconds(
        os.environ.get("XRAY_WORKER_TIMEOUT_S")
        or data.get("worker_timeout_s", DEFAULT_WORKER_TIMEOUT_S),
        "XRAY_WORKER_TIMEOUT_S" if os.environ.get("XRAY_WORKER_TIMEOUT_S") else "worker_timeout_s",
    )
    if data.get("address"):
        return ClusterSpec(address=data["address"], worker_timeout_s=timeout)
    cls = data["cluster_class"]
    kwargs = dict(data.get("cluster_kwargs") or {})
    if cls == DEFAULT_CLUSTER:
        kwargs.setdefault("n_workers", os.cpu_count() or 1)
        kwargs.setdefault("threads_per_worker", 1)
        kwargs.setdefault("processes", True)
        kwargs.setdefault("dashboard_address", ":0")
    if cls != DEFAULT_CLUSTER:  # Dask's own is there; importing it costs a no-op run 0.5 s
        _import_class(cls)  # refuse a class that cannot be imported before the run starts
    return ClusterSpec(
        cluster_class=cls,
        cluster_kwargs=kwargs,
        adapt_kwargs=data.get("adapt_kwargs"),
        worker_timeout_s=timeout,
    )


def housekeeping() -> dict[str, Any]:
    """The :data:`HOUSEKEEPING` settings the user's Dask config leaves at
    distributed's defaults (a value set in a Dask YAML file, a ``DASK_*``
    variable or ``dask.config.set`` wins)."""
    import dask

    shipped = shipped_defaults(list(HOUSEKEEPING))
    return {
        key: value
        for key, value in HOUSEKEEPING.items()
        if dask.config.get(key, None) == shipped[key]
    }


def shipped_defaults(keys: list[str]) -> dict[str, Any]:
    """The values Dask and distributed ship for ``keys``, whatever the user set."""
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults)

    shipped: dict = {}
    for defaults in dask.config.defaults:
        dask.config.update(shipped, defaults)
    return {key: dask.config.get(key, None, config=shipped) for key in keys}


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cluster class {path!r} cannot be imported: {exc}") from exc


class DaskCluster:
    """A Dask cluster and its client, started in a background thread.

    Starting returns at once, so a flow lists and plans while the workers come
    up; :meth:`client` waits for them. The start itself waits ``delay_s`` first
    (or until :meth:`client` is called), and :meth:`close` before then starts
    nothing: a run with nothing to do, whose listing and planning take less than
    that, never starts worker processes. :meth:`client` also waits for the
    first worker, saying what it waits for (a batch system's jobs may queue
    for long). Usable as a context manager that closes the client (and the
    cluster, when it started one).
    """

    def __init__(self, spec: ClusterSpec, *, delay_s: float = 0.0):
        self.spec = spec
        self._client = None
        self._cluster = None
        self._error: BaseException | None = None
        self._go = threading.Event()  # start now
        self._cancelled = False
        self._delay_s = delay_s
        self._worker_seen = False
        self._thread = threading.Thread(target=self._start, name="dask-cluster-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        self._go.wait(self._delay_s)
        if self._cancelled:
            return
        try:
            import dask
            from distributed import Client

            if self.spec.address:  # the client's own stream keeps a short log too
                with dask.config.set(housekeeping()):
                    self._client = Client(self.spec.address, set_as_default=False, timeout=60)
                return
            cls = _import_class(self.spec.cluster_class or DEFAULT_CLUSTER)
            key = "distributed.nanny.pre-spawn-environ"
            environ = {**(dask.config.get(key, default={}) or {}), **WORKER_MALLOC}
            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ to 64 KiB for the workers it
            # spawns; glibc reads it at process start, so it is set before spawning.
            # A nanny hands the config of its start to its worker (an adaptive
            # cluster's later workers get distributed's defaults).
            with dask.config.set({key: environ, **housekeeping()}):
                self._cluster = cls(**self.spec.cluster_kwargs)
                if self.spec.adapt_kwargs:
                    self._cluster.adapt(**self.spec.adapt_kwargs)
                self._client = Client(self._cluster, set_as_default=False)
        except BaseException as exc:  # handed to the caller of client()
            self._error = exc

    def client(self, timeout: float = 600):
        """The ``distributed.Client``, once the cluster is up and has a worker."""
        self._go.set()
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
                notify("workers_pending", pending=pending, waited_s=waited)
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
        self._cancelled = True  # not started yet: it never will be
        self._go.set()
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
