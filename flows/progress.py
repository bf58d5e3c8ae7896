"""A run's milestones, told once: to the flow run's log and to in-process observers.

A flow calls :func:`notify` with an event name and a few fields, once per
milestone. The event goes to

- the Prefect run logger (the UI's log tab, a deployment's worker), as one line
  formatted per event kind; ``batch`` events at most once per
  :data:`LOG_EVERY_S` (and for the last batch), so a run of thousands of
  batches does not flood the API;
- every observer registered with :func:`observe` (the CLI's phase lines and
  bar), in the flow's thread, each event.

Events: ``waiting`` (run_id, holder, since: another run holds the store's
lease), ``lease_taken_over`` (run_id, holder, reason), ``listed`` (inputs,
seconds), ``planned`` (new, retried, skipped, batches, images), ``cluster``
(workers, dashboard), ``workers_pending`` (pending, waited_s: no Dask worker
yet), ``batch`` (done, total, failed, batches_done, batches, rate),
``committed`` (rows), ``scored`` (rows), ``headers`` (rows: header columns
filled), ``unkeyed`` (once: headers named patients but no key was set),
``other_key`` (key_id, stored: the store's pseudonyms came from another key); and,
from :mod:`flows.server`, ``prefect_server`` (url: the local Prefect server
being started).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "LOG_EVERY_S",
    "UNKEYED",
    "Observer",
    "event_line",
    "log_line",
    "notify",
    "observe",
    "other_key_line",
]

Observer = Callable[[str, dict[str, Any]], None]
_observers: list[Observer] = []

#: Seconds between two progress lines in a flow run's log.
LOG_EVERY_S = 2.0
#: The one line of a run that stores DICOMs without their identifiers.
UNKEYED = (
    "DICOM headers name patients, studies or series, but no pseudonym key is set "
    "(XRAY_PSEUDONYM_KEY on every worker, or --pseudonym-key-block): their ids are not "
    "stored, and `xray split` places each such image on its own"
)


def _progress(f: dict[str, Any]) -> str:
    done, total, rate = f["done"], f["total"], f.get("rate") or 0.0
    text = f"progress: {done}/{total} images ({100 * done / max(total, 1):.0f}%)"
    if "batches" in f:
        text += f", {f['batches_done']}/{f['batches']} batches"
    text += f", {rate:.1f} images/s"
    if rate > 0 and done < total:
        text += f", ETA {(total - done) / rate:.0f} s"
    return text


#: How each event reads, in a flow run's log and on the CLI's console alike.
_LINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "prefect_server": lambda f: (
        f"starting a local Prefect server at {f['url']} (once: later runs reuse it; "
        "`xray server stop` stops it)"
    ),
    "waiting": lambda f: (
        f"waiting: run {f['run_id']} ({f['holder']}) has been writing the store since {f['since']}"
    ),
    "lease_taken_over": lambda f: (
        f"took over the lease of run {f['run_id']} ({f['holder']}): {f['reason']}"
    ),
    "listed": lambda f: f"listed {f['inputs']} inputs in {f['seconds']:.1f} s",
    "planned": lambda f: (
        f"planned {f['images']} images in {f['batches']} "
        f"{'batch' if f['batches'] == 1 else 'batches'} "
        f"({f['new']} new, {f['retried']} to retry, {f['skipped']} already done)"
    ),
    "later_frames": lambda f: (
        f"{f['files']} files hold several frames: {f['images']} more images to process"
    ),
    "cluster": lambda f: (
        f"cluster: {f['workers']} Dask workers"
        + (f" (dashboard {f['dashboard']})" if f.get("dashboard") else "")
    ),
    "workers_pending": lambda f: f"waiting for workers: {f['pending']}",
    "batch": _progress,
    "committed": lambda f: f"committed {f['rows']} rows",
    "scored": lambda f: f"scored {f['rows']} rows",
    "headers": lambda f: f"filled the header columns of {f['rows']} stored DICOM rows",
    "unkeyed": lambda f: UNKEYED,
    "other_key": lambda f: other_key_line(f),
}
_WARNINGS = {"lease_taken_over", "unkeyed", "other_key"}
#: Said before a flow run exists, on the terminal only.
_NOT_LOGGED = {"prefect_server"}
_last_progress: dict[str, float] = {}  # flow run -> time of its last progress line


def other_key_line(f: dict[str, Any]) -> str:
    """The warning of a run whose pseudonym key is not the one the store's were made with."""
    return (
        f"the store's pseudonyms were made with key {', '.join(f['stored'])}, this run's key is "
        f"{f['key_id']}: its patients, studies and series get other ids than the stored ones"
    )


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Send the events of flows run inside the block to ``observer``."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def event_line(event: str, fields: dict[str, Any]) -> str | None:
    """How ``event`` reads, in a flow run's log and on the CLI's console alike;
    None for an event without a line."""
    line = _LINES.get(event)
    return line(fields) if line else None


def log_line(event: str, fields: dict[str, Any]) -> str | None:
    """How ``event`` reads in a flow run's log; None for an event that is not logged."""
    return None if event in _NOT_LOGGED else event_line(event, fields)


def notify(event: str, **fields: Any) -> None:
    """Tell the flow run's log and the observers (if any) that ``event`` happened."""
    text = log_line(event, fields)
    logger, run = _run_logger()
    if text is not None and _log_now(event, fields, run):
        logger.log(logging.WARNING if event in _WARNINGS else logging.INFO, text)
    for observer in list(_observers):
        observer(event, fields)


def _log_now(event: str, fields: dict[str, Any], run: str) -> bool:
    """Whether to log ``event`` now: a progress line at most every LOG_EVERY_S, and the last."""
    if event != "batch":
        return True
    now = time.monotonic()
    last = _last_progress.get(run)
    if last is not None and now - last < LOG_EVERY_S and fields["done"] < fields["total"]:
        return False
    _last_progress[run] = now
    if fields["done"] >= fields["total"]:
        _last_progress.pop(run, None)  # the run's last progress line: forget the run
    return True


def _run_logger() -> tuple[Any, str]:
    """The Prefect run logger and the flow run's id; a plain logger outside a run
    (and without importing Prefect where nothing has: ``xray verify --scheduler``)."""
    import sys

    if "prefect" not in sys.modules:
        return logging.getLogger(__name__), ""
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return logging.getLogger(__name__), ""
    return get_run_logger(), str(context.flow_run.id)
