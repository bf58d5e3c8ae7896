"""``flows.server.prefect_api``: one API per run, and no heartbeat against a
temporary one (its thread is joined at the end of every flow run)."""

from __future__ import annotations

from prefect import flow
from prefect.settings import get_current_settings

from flows.server import (
    local_server,
    local_server_url,
    prefect_api,
    server_state_file,
    stop_local_server,
)


@flow
def _echo(x: int) -> dict:
    return {"x": x, "heartbeat": get_current_settings().flows.heartbeat_frequency}


def test_a_configured_server_is_used_as_it_is(prefect_server):
    configured = get_current_settings().flows.heartbeat_frequency
    with prefect_api() as url:
        assert url == prefect_server
        assert get_current_settings().flows.heartbeat_frequency == configured


def test_a_temporary_server_runs_flows_without_heartbeats(monkeypatch, prefect_server):
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("XRAY_PREFECT_SERVER", "temporary")
    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default
    with prefect_api() as url:
        assert url != prefect_server
        assert get_current_settings().api.url == url
        assert _echo(3) == {"x": 3, "heartbeat": None}
    assert get_current_settings().flows.heartbeat_frequency is not None


def test_the_local_server_is_started_once_reused_and_stopped(monkeypatch, tmp_path, prefect_server):
    """Without PREFECT_API_URL, the first run starts a local server in the
    background; later runs (other processes) reuse it; `xray server stop` ends it."""
    import json
    import os
    import subprocess
    import sys

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("XRAY_PREFECT_SERVER")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    try:
        with prefect_api() as url:
            assert url != prefect_server and url.startswith("http://127.0.0.1:")
            assert get_current_settings().api.url == url
            assert _echo(4) == {"x": 4, "heartbeat": None}
        state = json.loads((tmp_path / "home" / "xray-server.json").read_text())
        assert state["url"] == url
        # What `xray server` reads: the one state file, and the server answering there.
        assert server_state_file() == tmp_path / "home" / "xray-server.json"
        assert local_server_url() == url
        # Another process asks for the server: the same one, nothing started.
        code = "from flows.server import local_server; print(local_server())"
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.stdout.strip() == url, out.stderr
        assert json.loads((tmp_path / "home" / "xray-server.json").read_text()) == state
        # A server another Prefect version started is replaced (after an upgrade).
        import prefect

        older = {**state, "version": "0.0.1"}
        (tmp_path / "home" / "xray-server.json").write_text(json.dumps(older))
        url = local_server()
        state = json.loads((tmp_path / "home" / "xray-server.json").read_text())
        assert state["version"] == prefect.__version__ and state["pid"] != older["pid"]
    finally:
        os.environ.pop("PREFECT_API_URL", None)  # prefect_api leaves the local URL exported
        stopped = stop_local_server()
    assert stopped == url
    assert not (tmp_path / "home" / "xray-server.json").exists()
    assert local_server_url() is None
    assert local_server.__doc__  # documented for `xray server`
