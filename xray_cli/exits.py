"""How an ``xray`` command ends: when it cannot do its work, one ``error:`` line
and an exit code, 2 when the command was refused before any work (bad input, a
store held or of another format, credentials in the options), 1 when the work
itself failed (a rerun resumes it); and, whatever the code, how the process
ends with it (:func:`end_process`).

Why the process does not end the usual way: reading a Delta table goes through
a pyarrow dataset over delta-rs's Python file system (``PyFileSystem``), and
Arrow tears that scan down on one of its own threads once the table is handed
over, releasing the Python buffers it read (``arrow::py::PyBuffer``), which takes
the GIL. When that is late and the interpreter is already finalizing, the thread
is ended by ``pthread_exit`` inside a ``noexcept`` destructor: ``terminate called
without an active exception``, SIGABRT, exit 134 instead of the command's own
(apache/arrow#34314; a core of ``xray train`` refused, in docs/benchmarks.md).
The interpreter's exit handlers run as usual (threads joined, Prefect's queues
drained, logging flushed, child processes ended); only the finalization that
follows them, and the C++ static destructors of the native thread pools, are
skipped.
"""

from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
from typing import Any, NoReturn

import typer

__all__ = ["end_process", "fail", "refused", "run_flow"]


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` refused the run before any work (exit 2): credentials in the
    options, a store held by another run or of another pipeline or format, a
    missing input, or a bad parameter (the project's own checks raise a plain
    ValueError; a library's error while reading a file subclasses it: exit 1)."""
    from xraycore.store import StoreConflictError, StoreFormatError
    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.storage import CredentialsRefusedError

    refusals = (
        CredentialsRefusedError,
        LeaseHeldError,
        StoreConflictError,
        StoreFormatError,
        FileNotFoundError,
    )
    return isinstance(exc, refusals) or type(exc) is ValueError


def run_flow(flow_name: str, console, *, verbose: bool, **params: Any) -> dict[str, Any]:
    """Run a flow (``preprocess`` or ``classify``) with ``console`` observing it;
    a refusal exits 2, a failed run 1, each with one ``error:`` line (and
    Prefect's traceback only with ``-v``)."""
    import flows.server
    from flows.progress import observe

    if flow_name == "preprocess":
        from flows.preprocess import preprocess_dataset as flow
    else:
        from flows.classify import classify_store as flow
    if not verbose:
        from xray_cli.console import one_line_errors

        one_line_errors()
    try:
        with observe(console):
            # Looked up at each call: a drill wraps flows.server.run_flow.
            return flows.server.run_flow(flow, **params)
    except Exception as exc:
        console.close()
        if refused(exc):
            fail(str(exc), 2)
        hint = " (rerun to resume)" if isinstance(exc, ValueError) else ""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = " (the store's disk or quota is full: free space, then rerun to resume)"
        fail(f"run failed: {type(exc).__name__}: {exc}{hint}")
    finally:
        console.close()


def end_process(code: int) -> NoReturn:
    """End this process with ``code``: the interpreter's exit handlers first, then
    ``os._exit``, with no interpreter finalization for a native thread to race.

    Parameters
    ----------
    code : int
        The exit status, the command's own (0, 1 or 2).

    Notes
    -----
    The steps of ``Py_FinalizeEx`` that matter, in its order: join the threads
    that are not daemons and run ``threading``'s exit hooks (Prefect's services
    drain their queues there), then the :mod:`atexit` handlers (logging's
    shutdown, multiprocessing's children, zarr's event loop, Arrow's S3). As
    when Python fails to flush standard output at exit, that failure is exit 120.
    """
    threading._shutdown()  # what Py_FinalizeEx calls first; no public name for it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream
            code = code or 120
    os._exit(code)
