"""``flows.runner.prefect_api``: one API per run, and no heartbeat against a
temporary one (its thread is joined at the end of every flow run)."""

from __future__ import annotations

from prefect import flow
from prefect.settings import get_current_settings

from flows.runner import prefect_api


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
    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default
    with prefect_api() as url:
        assert url != prefect_server
        assert get_current_settings().api.url == url
        assert _echo(3) == {"x": 3, "heartbeat": None}
    assert get_current_settings().flows.heartbeat_frequency is not None
