"""``xray log``, ``vacuum`` and ``upgrade``: a store's versions, their retention,
and moving a store of an older format into this one without reprocessing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from xray_cli.exits import fail
from xray_cli.options import StorageOptions, parse_storage_options
from xray_cli.store import open_store

__all__ = ["log", "upgrade", "vacuum"]


def log(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per version (a list).")
    ] = False,
    storage_options: StorageOptions = None,
) -> None:
    """List the store's versions, newest first (a run's batches summed up in one line)."""
    from xraycore.store.versions import log_lines

    st, _ = open_store(store, storage_options)
    history = st.history()
    if as_json:
        typer.echo(json.dumps(history, indent=2, default=str))
        return
    if not history:
        typer.echo(f"{store} has no versions yet")
        return
    for line in log_lines(history):
        typer.echo(line)


def vacuum(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    keep: Annotated[int | None, typer.Option(help="Keep this many latest versions.")] = None,
    older_than: Annotated[
        float | None, typer.Option(help="Keep the versions younger than this many days.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would go; remove nothing.")] = False,
    storage_options: StorageOptions = None,
) -> None:
    """Remove the table files no kept version reads (pixels are never removed)."""
    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.versions import vacuum_store

    if (keep is None) == (older_than is None):
        raise typer.BadParameter("give one of --keep N or --older-than DAYS")
    st, _ = open_store(store, storage_options)
    try:
        done = vacuum_store(
            st,
            keep=keep,
            older_than=None if older_than is None else timedelta(days=older_than),
            dry_run=dry_run,
        )
    except (LeaseHeldError, ValueError) as exc:
        fail(str(exc), 2)
    for name, what in done.items():
        verb = "would remove" if dry_run else "removed"
        typer.echo(
            f"{name}: history starts at version {what['first_kept']}; {verb} "
            f"{what['versions_removed']} versions, {len(what['removed'])} files"
        )


def upgrade(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    storage_options: StorageOptions = None,
) -> None:
    """Move a store of an older format into this one, touching no pixel."""
    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.upgrade import upgrade_store

    try:
        done = upgrade_store(store, parse_storage_options(storage_options))
    except (LeaseHeldError, ValueError) as exc:
        fail(str(exc), 2)
    if not done["upgraded"]:
        typer.echo(f"{store} is in format {done['to_format']} already: nothing to do")
        return
    if done.get("conformed"):
        typer.echo(
            f"conformed {store}'s metadata ({'; '.join(done['conformed'])}): {done['rows']} "
            f"rows are version {done['version']}; no pixel was rewritten"
        )
        return
    typer.echo(
        f"upgraded {store} from format {done['from_format']} to {done['to_format']}: "
        f"{done['rows']} metadata rows and {done['predictions']} predictions are "
        f"version {done['version']}; no pixel was rewritten"
    )
