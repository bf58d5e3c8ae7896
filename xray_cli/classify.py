"""``xray classify``: the scoring flow over the rows a model has not scored yet."""

from __future__ import annotations

from typing import Annotated

import typer

from xray_cli.console import print_report, run_console
from xray_cli.exits import run_flow
from xray_cli.options import (
    AwsCredentials,
    Format,
    LogFormat,
    StorageOptions,
    Verbose,
    Where,
    cluster_value,
    parse_storage_options,
    parse_where,
)

__all__ = ["classify"]


def classify(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    model: Annotated[str, typer.Option(help="ONNX model (path or URL).")],
    size: Annotated[int | None, typer.Option(help="Contract: input size.")] = None,
    channels: Annotated[int | None, typer.Option(help="Contract: 1 or 3.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Contract: threshold.")] = None,
    output: Annotated[str | None, typer.Option(help="Contract: sigmoid|softmax2.")] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Report on this split only (default: each split, test first)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    where: Where = None,
    storage_options: StorageOptions = None,
    aws_credentials: AwsCredentials = None,
    verbose: Verbose = False,
    log_format: Format = LogFormat.text,
) -> None:
    """Score the ok rows of STORE that MODEL has not scored yet; write predictions
    (and the report)."""
    contract = {
        k: v
        for k, v in dict(size=size, channels=channels, threshold=threshold, output=output).items()
        if v is not None
    }
    cluster = cluster_value(None, scheduler, workers)
    console = run_console(verbose=verbose, log_format=log_format.value)
    result = run_flow(
        "classify",
        console,
        verbose=verbose,
        cluster=cluster,
        store=store,
        model=model,
        contract=contract or None,
        split=split,
        where=parse_where(where),
        storage_options=parse_storage_options(storage_options),
        aws_credentials=aws_credentials,
    )
    console.line(f"scored {result['scored']} rows of {store} with {model}", "summary", **result)
    if result["report"] and not console.json:
        print_report(console, result["report"])
