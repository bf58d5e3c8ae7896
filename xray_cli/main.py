"""The ``xray`` command line: run, inspect, verify, sheet, demo, classify, split, train,
log, vacuum, upgrade.

It sits above the flows: it imports them (lazily, after setting up logging),
never the other way round. Each group of commands is a module of its own
(:mod:`xray_cli.run`, :mod:`xray_cli.store`, :mod:`xray_cli.classify`,
:mod:`xray_cli.train`, :mod:`xray_cli.versions`, :mod:`xray_cli.server`); the exit codes are
:mod:`xray_cli.exits`'s. This module holds the app and registers them, and
:func:`main`, the one way a process of the command line ends (with the command's
own exit code, see :func:`xray_cli.exits.end_process`).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Annotated, NoReturn

import typer

from xray_cli import classify, run, server, store, train, versions
from xray_cli.exits import end_process

__all__ = ["app", "main", "run_command"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Chest X-ray collections -> Zarr + Delta Lake training stores, versioned.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"xray-pipeline {version('xray-pipeline')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # The app's own options; its help text is the Typer's (above).
    pass


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


def run_command(args: list[str] | None = None) -> int:
    """Run ``xray ARGS`` (``sys.argv[1:]`` by default) in this process.

    Returns
    -------
    code : int
        The command's exit code, as ``sys.exit`` would give it: 0 when it returned,
        click's code for a usage error, 1 after an unexpected error's traceback.
    """
    try:
        app(args)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # sys.exit("message"), as Python prints it
        return 1
    except Exception as exc:  # typer's hook prints it, as it would at exit
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1
    return 0


def main(args: list[str] | None = None) -> NoReturn:
    """The ``xray`` console script: run the command, then end the process with its
    exit code (:func:`~xray_cli.exits.end_process`)."""
    end_process(run_command(args))


if __name__ == "__main__":
    sys.exit(main())
