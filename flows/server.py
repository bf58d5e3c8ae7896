"""Where a run reports: one Prefect API, the local server ``xray`` keeps, and
:func:`run_flow`, the one way the command line and scripts call a flow.

Nothing here imports Prefect at import time (the command line starts fast).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from flows.progress import notify

__all__ = [
    "LOCAL_SERVER_PORT",
    "SERVER_STATE",
    "local_server",
    "local_server_url",
    "prefect_api",
    "run_flow",
    "server_state_file",
    "stop_local_server",
]


@contextlib.contextmanager
def prefect_api():
    """Make sure the flow talks to one Prefect API.

    With PREFECT_API_URL set (a server, Prefect Cloud) nothing is done.
    Otherwise the local Prefect server of :func:`local_server` is used (started
    in the background by the first run, reused by every later one: a run no
    longer pays 10-15 s to start an API), or, with
    ``XRAY_PREFECT_SERVER=temporary``, a temporary API that ends with the run.
    Flow-run heartbeats are off for both: they feed zombie-run detection, and
    Prefect joins the heartbeat thread, which sleeps in 1 s steps, at the end
    of every flow run (0.5 s on average, 7% of a 512-scan run;
    docs/benchmarks.md); a run killed with SIGKILL stays "Running" in the
    local UI.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if os.environ.get("PREFECT_API_URL"):
        # Prefect reads its settings when it is first imported: a URL exported
        # after that import must be handed over explicitly.
        with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            yield os.environ["PREFECT_API_URL"]
        return
    if os.environ.get("XRAY_PREFECT_SERVER", "local") != "temporary":
        url = local_server()
        # Left exported: the run's page is printed once the flow has returned.
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(
                {PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
            ):
                yield url
        finally:
            from prefect.events.worker import EventsWorker

            EventsWorker.drain_all(timeout=10)  # deliver the run's events
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        local = {PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with temporary_settings(local):
            yield server.api_url
    finally:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)  # deliver the run's events before the API goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


#: Where :func:`local_server` listens unless that port is taken (Prefect's own default).
LOCAL_SERVER_PORT = 4200

#: The file in ``$PREFECT_HOME`` where :func:`local_server` records the server it
#: started (``url``, ``pid``, Prefect ``version``); beside it ``xray-server.log``
#: (the server's output) and ``xray-server.lock`` (one start at a time).
SERVER_STATE = "xray-server.json"

_STARTED: list = []


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def server_state_file() -> Path:
    """The state file of the local server (:data:`SERVER_STATE` in ``$PREFECT_HOME``)."""
    return _prefect_home() / SERVER_STATE


def _recorded() -> dict[str, Any]:
    """What the state file says of the local server ({} when there is none)."""
    state = server_state_file()
    return json.loads(state.read_text()) if state.is_file() else {}


def _healthy(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def local_server_url() -> str | None:
    """The API URL of the local server :func:`local_server` started, when it
    answers; None when none was started or it does not answer (``xray server``)."""
    url = _recorded().get("url")
    return url if url and _healthy(url) else None


def _free_local_port() -> int:
    """:data:`LOCAL_SERVER_PORT`, or any free port when it is taken."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", LOCAL_SERVER_PORT))
        except OSError:  # taken: any free port
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_server(*, timeout_s: float = 180.0) -> str:
    """The API URL of this machine's local Prefect server for ``xray``, started
    in the background (its own process session, logs in
    ``$PREFECT_HOME/xray-server.log``) when none answers, and reused by every
    later run; ``xray server stop`` stops it. Its database is Prefect's own
    (``$PREFECT_HOME``), so runs stay in its UI.
    """
    import fcntl

    home = _prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "xray-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once start one server
        import prefect

        found = _recorded()
        url = found.get("url", "")
        if url and _healthy(url):
            if found.get("version") == prefect.__version__:
                return url
            stop_local_server()  # started by another Prefect version: start this one's
        port = _free_local_port()
        url = f"http://127.0.0.1:{port}/api"
        notify("prefect_server", url=url.removesuffix("/api"), started=True)
        proc = _start_server(home, port, url, timeout_s=timeout_s)
        server_state_file().write_text(
            json.dumps({"url": url, "pid": proc.pid, "version": prefect.__version__})
        )
        _STARTED.append(proc)  # it outlives this run: never reaped (or warned about) here
        return url


def _start_server(home: Path, port: int, url: str, *, timeout_s: float):
    """``prefect server start`` on ``port`` in its own session, once it answers at ``url``."""
    import signal
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "prefect"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    log_path = home / "xray-server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*command, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # outlives this run
        )
    deadline = time.monotonic() + timeout_s
    while not _healthy(url, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the CLI and its server process
            raise RuntimeError(
                f"the local Prefect server did not start (see {log_path}); "
                "or set PREFECT_API_URL to a server you run"
            )
        time.sleep(0.25)
    return proc


def stop_local_server() -> str | None:
    """Stop the server :func:`local_server` started; returns its URL, or None
    when none was running."""
    import signal

    state = server_state_file()
    if not state.is_file():
        return None
    found = json.loads(state.read_text())
    state.unlink()
    try:
        pid = int(found["pid"])
        # After a reboot the pid may be another program's: only a Prefect server is stopped.
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"prefect" not in f.read():
                return None
        os.killpg(pid, signal.SIGTERM)
    except (OSError, KeyError, ValueError):
        return None
    return found.get("url")


def run_flow(flow, **params: Any) -> Any:
    """Call ``flow(**params)`` against one Prefect API (see :func:`prefect_api`),
    after refusing credentials in ``storage_options`` (flow parameters are
    recorded by Prefect)."""
    from xraycore.store.storage import refuse_credentials

    refuse_credentials(params.get("storage_options"), "storage_options")
    with prefect_api():
        return flow(**params)
