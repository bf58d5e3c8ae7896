"""What the terminal shows during a run: one line per phase, a live progress bar
(images done/total, rate, ETA), then the summary.

Dask's and Prefect's own logging stays at WARNING unless ``-v``. Output that is
not a terminal (CI, a pipe) gets a progress line every 10% or 10 s instead of a
bar; ``--log-format json`` prints one JSON object per event for machines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from flows.progress import event_line

__all__ = ["RunConsole", "one_line_errors", "print_report", "quiet_libraries", "run_console"]

#: The events shown as a line of their own (worded by :mod:`flows.progress`); a
#: batch moves the bar, a commit ends it.
_SHOWN = frozenset(
    {
        "prefect_server",
        "workers_pending",
        "listed",
        "planned",
        "cluster",
        "waiting",
        "lease_taken_over",
        "unkeyed",
        "headers",
        "other_key",
    }
)
LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.1


def quiet_libraries(*, verbose: bool, log_format: str) -> None:
    """Set Prefect's and Dask's console logging before either is imported.

    Environment variables, so the temporary Prefect server and Dask's worker
    processes inherit them. The Prefect UI still gets INFO logs: only the
    console handler is raised to WARNING.
    """
    if log_format == "json":
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FORMATTER", "json")
    if verbose:
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if "prefect.logging.handlers" in sys.modules:  # Prefect configured its logging already
        from prefect.logging.handlers import PrefectConsoleHandler

        known = logging.root.manager.loggerDict.values()
        loggers = [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]
        for handler in {h for lg in loggers for h in lg.handlers}:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.WARNING)


class _OneLineErrors(logging.Filter):
    """Prefect's log records without their tracebacks: the flow engine's record of
    the exception that ended a run is dropped (the CLI prints it as one ``error:``
    line), and any other record keeps its message and loses its traceback.

    ``-v`` shows everything; the Prefect UI always gets the full record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith("prefect.flow_runs"):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def one_line_errors() -> None:
    """Install :class:`_OneLineErrors` on Prefect's console handlers (once Prefect
    has configured its logging)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    known = logging.root.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OneLineErrors) for f in handler.filters
        ):
            handler.addFilter(_OneLineErrors())


def run_console(*, verbose: bool, log_format: str) -> RunConsole:
    """The console of one run, once the libraries are quieted (before they are imported)."""
    quiet_libraries(verbose=verbose, log_format=log_format)
    return RunConsole(log_format=log_format)


def print_report(console: RunConsole, report: dict) -> None:
    """The classification report, as text, on ``console``."""
    from xraycore.predict.report import report_text

    console.line(report_text(report).rstrip("\n"))


class RunConsole:
    """An observer of :mod:`flows.progress` events that writes to ``stream``."""

    def __init__(
        self,
        *,
        log_format: str = "text",
        stream: TextIO | None = None,
        interactive: bool | None = None,
    ):
        if log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
        self.json = log_format == "json"
        self.stream = stream or sys.stdout
        if interactive is None:
            interactive = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.interactive = interactive and not self.json
        self._bar = None
        self._task = None
        self._last_line = (0.0, -1.0)  # (time, fraction) of the last progress line
        self._t0 = time.perf_counter()

    # -- plain lines -------------------------------------------------------
    def line(self, text: str, event: str = "message", **fields: Any) -> None:
        if self.json:
            record = {"event": event, "time": round(time.time(), 3), **fields}
            if event == "message":
                record["message"] = text
            self.stream.write(json.dumps(record, default=str) + "\n")
        elif self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    # -- flow events ---------------------------------------------------------
    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(fields)
        elif event in _SHOWN:
            self._say(event, fields)

    def _on_later_frames(self, f: dict[str, Any]) -> None:
        self._stop_bar()  # the later frames have a bar of their own
        self._say("later_frames", f)

    def _on_batch(self, f: dict[str, Any]) -> None:
        done, total = f["done"], max(f["total"], 1)
        if self.interactive:
            self._advance(done, total, f.get("failed", 0), f.get("rate") or 0.0)
            return
        now = time.perf_counter()
        fraction = done / total
        last_t, last_fraction = self._last_line
        if (
            done == f["total"]
            or now - last_t >= LINE_EVERY_S
            or fraction - last_fraction >= LINE_EVERY_FRACTION
        ):
            self._last_line = (now, fraction)
            self.line(event_line("batch", f), "progress", **f)

    def _on_committed(self, f: dict[str, Any]) -> None:
        self._stop_bar()

    def _on_scored(self, f: dict[str, Any]) -> None:
        self._stop_bar()

    def _say(self, event: str, f: dict[str, Any]) -> None:
        """``event``'s line as :mod:`flows.progress` words it."""
        self.line(event_line(event, f), event, **f)

    # -- the bar -------------------------------------------------------------
    def _advance(self, done: int, total: int, failed: int, rate: float) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("images"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("images", total=total, rate="", failed="")
        self._bar.update(
            self._task,
            completed=done,
            total=total,
            rate=f"{rate:.1f} images/s",
            failed=f"{failed} failed" if failed else "",
        )

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop_bar()
