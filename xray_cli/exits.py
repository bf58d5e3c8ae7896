"""How an ``xray`` command ends when it cannot do its work: one ``error:`` line
and an exit code, 2 when the command was refused before any work (bad input, a
store held or of another format, credentials in the options), 1 when the work
itself failed (a rerun resumes it).
"""

from __future__ import annotations

import errno
from typing import Any

import typer

__all__ = ["fail", "refused", "run_flow"]


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
