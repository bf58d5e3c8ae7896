"""Batch tasks of the preprocessing flow; the logic lives in ``xraycore``.

A task run lives in the flow process and hands its one call to a Dask worker
(``client``), which imports ``xraycore`` only: Prefect sees one task run per
batch, and the workers never start Prefect's engine.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from xraycore.batch import Batch, finish_run, process_batch
from xraycore.sources.header import Pseudonyms
from xraycore.store import FencedCommitError

__all__ = ["commit_metadata", "preprocess_batch", "transient"]

FAILURES_NAMED = 10
R = TypeVar("R")


def batch_run_name(parameters: dict[str, Any]) -> str:
    """``batch rows 64-127``: the rows of the store a batch writes."""
    batch = parameters["batch"]
    return f"batch rows {batch.start}-{batch.start + max(len(batch.items), 1) - 1}"


def on_cluster(client: Any, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` on a Dask worker of ``client`` (a ``distributed.Client``),
    or here when it is None."""
    if client is None:
        return fn(*args, **kwargs)
    return client.submit(fn, *args, pure=False, **kwargs).result()


#: A full disk, an exhausted quota or a read-only store: retrying cannot help.
NOT_TRANSIENT = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a batch unless its storage is full or
    read-only, or its run lost the store's lease (a retry would be fenced off
    again). Transient object-store faults are retried below, by botocore and
    s3fs, on every request; what reaches here is a batch that outlived them (a
    killed worker, an endpoint down for minutes) and is worth one more go."""
    try:
        state.result()
    except OSError as exc:
        return exc.errno not in NOT_TRANSIENT
    except FencedCommitError:
        return False
    except Exception:
        return True
    return True


# NO_CACHE: nothing to cache, and the inputs (a Dask client) are not hashable.
@task(
    name="preprocess-batch",
    task_run_name=batch_run_name,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def preprocess_batch(
    batch: Batch,
    store: str,
    spec: dict,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
    pseudonyms: Pseudonyms | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Read, process and store one batch of scans on the cluster; returns
    counts, never pixels. Logs a WARNING naming the inputs that failed.

    Retries are safe: a batch rewrites its own whole shards and writes its
    rows as a file of its own (:mod:`xraycore.store._files`), which only the
    run's committer commits, while this run holds the store's lease.
    """
    result = on_cluster(
        client,
        process_batch,
        batch,
        store=store,
        spec=spec,
        run_id=run_id,
        storage_options=storage_options,
        source_options=source_options,
        fence=run_id,
        commit=False,
        pseudonyms=pseudonyms,
    )
    if result["failed"]:
        named = "; ".join(f"{i} ({e})" for i, e in result["failures"][:FAILURES_NAMED])
        more = result["failed"] - min(result["failed"], FAILURES_NAMED)
        get_run_logger().warning(
            "%d of %d inputs failed: %s%s",
            result["failed"],
            len(batch.items),
            named,
            f"; and {more} more" if more else "",
        )
    return result


@task(
    name="commit-metadata",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    persist_result=False,
)
def commit_metadata(
    store: str,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    pipeline_hash: str | None = None,
    client: Any = None,
) -> int:
    """Commit the end of the run: its batches' small table files compacted
    (a version with kind ``run-end``), on a Dask worker of ``client`` (here
    without one); returns the store's rows."""
    return on_cluster(
        client,
        finish_run,
        store=store,
        run_id=run_id,
        storage_options=storage_options,
        pipeline_hash=pipeline_hash,
    )
