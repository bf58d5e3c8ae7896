"""The ``xray`` command line in a fresh process: the one way every test runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ENTRY", "ROOT", "xray"]

#: The repository root (this checkout).
ROOT = Path(__file__).resolve().parents[1]
#: The console script's entry point as a ``python -c`` program, for a ``code=``
#: that runs something first (``ENTRY.format(prelude=...)``).
ENTRY = "import sys\n{prelude}\nfrom xray_cli.main import main\nmain(sys.argv[1:])\n"


def xray(
    *args: str,
    env: dict[str, str] | None = None,
    code: str | None = None,
    installed: bool = False,
    timeout: float = 600,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``xray ARGS`` in a fresh process, its output captured as text.

    Parameters
    ----------
    *args : str
        The command line after ``xray``.
    env : dict, optional
        Variables over this process's environment.
    code : str, optional
        A program run with ``python -c`` instead of the entry point, ``args`` as
        its ``sys.argv[1:]`` (to hide torch, or to wrap :data:`ENTRY`).
    installed : bool
        Run the ``xray`` console script installed beside this interpreter, as a
        user does, in the caller's folder and environment. Otherwise ``python -m
        xray_cli`` of this checkout: from the repository root, with it first on
        ``PYTHONPATH``, and torch on one OpenMP thread (the test machines have
        two cores shared with other work, where its threads spin against each
        other).
    timeout : float
        Seconds before the test fails.
    check : bool
        Fail the test, with both output streams, unless ``xray`` exits 0.
    """
    if installed:
        full = {**os.environ, **(env or {})}
        command, cwd = [str(Path(sys.executable).parent / "xray"), *args], None
    else:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        full = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
        entry = ["-c", code] if code else ["-m", "xray_cli"]
        command, cwd = [sys.executable, *entry, *args], ROOT
    res = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd
    )
    if check:
        assert res.returncode == 0, f"xray {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res
