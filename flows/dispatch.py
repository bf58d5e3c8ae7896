"""Handing batches to the cluster in waves, results back in completion order."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["Done", "in_waves"]

B = TypeVar("B")

#: A finished batch: the batch, its result, and the exception it failed with (or None).
Done = tuple[B, Any, BaseException | None]


def in_waves(
    batches: Iterable[B],
    submit: Callable[[B], Any],
    *,
    window: int,
    before_submit: Callable[[], None] | None = None,
) -> Iterator[Done]:
    """Submit ``batches`` with at most ``window`` in flight; yield each as it finishes.

    Results (progress, events, scoring) come as soon as the first batches end,
    not after every batch of a large plan has been submitted, and a run that
    must stop (``before_submit`` raises: its lease was lost) hands out nothing more.

    Parameters
    ----------
    batches : iterable
        Submitted in this order.
    submit : callable
        ``submit(batch)`` returns a Prefect future (``.result()``, ``.wrapped_future``).
    window : int
        Batches in flight at once, >= 1; a few per worker keeps every worker busy.
    before_submit : callable, optional
        Called before each submission.

    Yields
    ------
    batch, result, error
        ``error`` is the exception of a batch that failed after its retries
        (``result`` is then None).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    waiting = iter(batches)
    running: dict[concurrent.futures.Future, tuple[Any, B]] = {}
    exhausted = False
    while True:
        while not exhausted and len(running) < window:
            batch = next(waiting, _END)
            if batch is _END:
                exhausted = True
                break
            if before_submit is not None:
                before_submit()
            future = submit(batch)
            running[future.wrapped_future] = (future, batch)
        if not running:
            return
        finished, _ = concurrent.futures.wait(
            list(running), return_when=concurrent.futures.FIRST_COMPLETED
        )
        for wrapped in finished:
            future, batch = running.pop(wrapped)
            try:
                result = future.result()
            except Exception as exc:  # a batch that failed after its retries
                yield batch, None, exc
            else:
                yield batch, result, None


_END = object()
