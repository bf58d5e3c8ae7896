"""Loopback ports for the real servers the tests start (Prefect, moto, proxies),
the AWS environment that points a process at the moto server, and a real
``prefect server`` process (the deployment tests and benchmarks/ use it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["AWS_ENV", "free_port", "prefect_env", "prefect_server_process"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The standard AWS environment for the moto server (add ``AWS_ENDPOINT_URL``).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def prefect_env(home: Path, port: int) -> dict[str, str]:
    """This process's environment for a Prefect server on ``port`` of loopback and
    the processes that talk to it: its own ``PREFECT_HOME``, no analytics, and
    workers that poll every 2 s (Prefect's default is 10 s)."""
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
    }


@contextlib.contextmanager
def prefect_server_process(
    env: dict[str, str], port: int, log: Path, *, timeout_s: float = 180.0
) -> Iterator[subprocess.Popen]:
    """A real ``prefect server start`` on 127.0.0.1:``port`` (its own process
    session, output in ``log``), once ``/api/health`` answers; stopped at exit.

    Raises RuntimeError, with the server's log, when it does not answer within
    ``timeout_s``.
    """
    prefect = Path(sys.executable).parent / "prefect"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/api/health", timeout_s, log)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the server and its own processes
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(url: str, timeout_s: float, log: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError("prefect server did not become healthy: " + log.read_text())
