"""``xray server``: the local Prefect server that ``xray run`` starts once and reuses."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["server"]


def server(
    action: Annotated[str, typer.Argument(help="status (default) or stop.")] = "status",
) -> None:
    """The local Prefect server that `xray run` starts once and reuses (when
    PREFECT_API_URL is not set): print where it is, or stop it."""
    import os

    from flows.server import local_server_url, stop_local_server

    if action == "stop":
        url = stop_local_server()
        typer.echo(f"stopped the local Prefect server at {url}" if url else "none was running")
        return
    if action != "status":
        raise typer.BadParameter(f"action must be status or stop, got {action!r}")
    if os.environ.get("PREFECT_API_URL"):
        typer.echo(f"PREFECT_API_URL is set: runs go to {os.environ['PREFECT_API_URL']}")
        return
    url = local_server_url()
    if url:
        typer.echo(f"local Prefect server: {url.removesuffix('/api')} (UI), API {url}")
    else:
        typer.echo("no local Prefect server is running: the next `xray run` starts one")
