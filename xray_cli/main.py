"""The ``xray`` command line: run, inspect, verify, sheet, demo, classify, split, train,
log, vacuum, upgrade.

It sits above the flows: it imports them (lazily, after setting up logging),
never the other way round. Each group of commands is a module of its own
(:mod:`xray_cli.run`, :mod:`xray_cli.store`, :mod:`xray_cli.classify`,
:mod:`xray_cli.train`, :mod:`xray_cli.versions`, :mod:`xray_cli.server`); the exit codes are
:mod:`xray_cli.exits`'s. This module holds the app and registers them.
"""

from __future__ import annotations

import sys

import typer

from xray_cli import classify, run, server, store, train, versions

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Chest X-ray collections -> Zarr + Delta Lake training stores, versioned.",
)

# In this order in `xray --help`.
for command in (
    run.run,
    store.inspect,
    store.verify,
    store.sheet,
    run.demo,
    classify.classify,
    store.split,
    train.train,
    versions.log,
    versions.vacuum,
    versions.upgrade,
    server.server,
):
    app.command()(command)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
