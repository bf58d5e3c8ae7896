"""What a flow tells whoever runs it in-process (the CLI's phase lines and bar).

The flow calls :func:`notify` with an event name and a few fields; an observer
registered with :func:`observe` receives them in the flow's thread. With no
observer (a deployment, a test) notifying costs nothing. The Prefect UI gets the
same information from logs and artifacts, not from here.

Events: ``waiting`` (run_id, holder, since: another run holds the store's
lease), ``lease_taken_over`` (run_id, holder, reason), ``listed`` (inputs),
``planned`` (new, retried, skipped, batches, images), ``cluster`` (workers,
dashboard), ``batch`` (done, total, failed, batches_done, batches),
``committed`` (rows), ``scored`` (rows).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Observer", "notify", "observe"]

Observer = Callable[[str, dict[str, Any]], None]
_observers: list[Observer] = []


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Send the events of flows run inside the block to ``observer``."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def notify(event: str, **fields: Any) -> None:
    """Tell the observers (if any) that ``event`` happened."""
    for observer in list(_observers):
        observer(event, fields)
