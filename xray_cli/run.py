"""``xray run`` and ``xray demo``: the preprocessing flow, its phases on the
terminal, then the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from xray_cli.console import print_report, run_console
from xray_cli.exits import run_flow
from xray_cli.options import (
    AwsCredentials,
    Format,
    LogFormat,
    StorageOptions,
    Verbose,
    cluster_value,
    parse_storage_options,
)

__all__ = ["demo", "preprocess", "run"]


def run(
    source: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix of scans.")],
    store: Annotated[str, typer.Option("--store", "--out", help="Store URL (path or s3://...).")],
    labels: Annotated[
        str | None,
        typer.Option(
            help="Labels CSV: ChestX-ray8 Data_Entry_2017.csv, CheXpert train.csv/valid.csv, or "
            "MIMIC-CXR mimic-cxr-2.0.0-chexpert.csv (its -metadata.csv next to it)."
        ),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Output size S (default 1024).")] = None,
    pipeline: Annotated[Path | None, typer.Option(help="Pipeline spec (.json/.toml).")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Scans per batch: one task, one writer; its Zarr shards hold up to 16. "
            "Default: the store's own, or 64 for a new store."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Dask workers (alone: a LocalCluster of N processes).")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    storage_options: StorageOptions = None,
    aws_credentials: AwsCredentials = None,
    overwrite: Annotated[bool, typer.Option(help="Discard a store of another pipeline.")] = False,
    cluster_class: Annotated[
        str | None, typer.Option(help="Dask cluster class, e.g. dask_jobqueue.SLURMCluster.")
    ] = None,
    cluster_kwargs: Annotated[str | None, typer.Option(help="Cluster kwargs, JSON.")] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "--classify", help="ONNX model: score each batch once committed."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster spec: local|existing|kubernetes|slurm, a YAML path or address."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait while another run writes STORE, then run.")
    ] = False,
    break_lease: Annotated[
        bool,
        typer.Option(
            "--break-lease", help="Remove STORE's lease first: its holder is known to be dead."
        ),
    ] = False,
    pseudonym_key_block: Annotated[
        str | None,
        typer.Option(
            help="Prefect Secret block holding the key of the DICOM headers' pseudonyms "
            "(default: XRAY_PSEUDONYM_KEY of each worker's environment)."
        ),
    ] = None,
    refresh_header: Annotated[
        bool,
        typer.Option(
            "--refresh-header",
            help="Fill the header columns of DICOM rows stored before them (headers only).",
        ),
    ] = False,
    verbose: Verbose = False,
    log_format: Format = LogFormat.text,
) -> None:
    """Process SOURCE into STORE (resumable: reruns skip finished scans).

    One run writes a store at a time: another run's store is refused (exit 2)
    unless --wait."""
    if batch_size is not None and batch_size < 1:
        raise typer.BadParameter("--batch-size must be >= 1")
    preprocess(
        source,
        store,
        verbose=verbose,
        log_format=log_format,
        cluster=cluster_value(cluster, scheduler, workers, cluster_class, cluster_kwargs),
        labels=labels,
        size=size,
        pipeline=str(pipeline) if pipeline else None,
        batch_size=batch_size,
        storage_options=parse_storage_options(storage_options),
        aws_credentials=aws_credentials,
        overwrite=overwrite,
        model=model,
        wait_for_lease=wait,
        break_lease=break_lease,
        pseudonym_key_block=pseudonym_key_block,
        refresh_header=refresh_header,
    )


def preprocess(
    source: str, store: str, *, verbose: bool, log_format: LogFormat, **params: Any
) -> None:
    """``xray run``: the preprocessing flow with ``params`` (the flow's defaults for
    the others), its phases on the terminal, then the summary."""
    console = run_console(verbose=verbose, log_format=log_format.value)
    console.line(f"xray run {source} -> {store}", "start", source=source, store=store)
    summary = run_flow("preprocess", console, verbose=verbose, source=source, store=store, **params)
    _print_summary(console, summary)


def _ui_link(flow_run_id: str | None) -> str | None:
    """The flow run's page, when the run reported to a server that outlives it."""
    import os

    api = os.environ.get("PREFECT_API_URL")
    if not (api and flow_run_id):
        return None
    ui = os.environ.get("PREFECT_UI_URL") or api.removesuffix("/api")
    return f"{ui}/runs/flow-run/{flow_run_id}"


def _print_summary(console, s: dict[str, Any]) -> None:
    if console.json:
        console.line("", "summary", **{k: v for k, v in s.items() if k != "report"})
        return
    console.line(
        f"done: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped "
        f"in {s['seconds']:.1f} s ({s['images_per_s']:.1f} images/s)"
    )
    console.line(f"store: {s['store']} ({s['rows_in_store']} rows, pipeline {s['pipeline_hash']})")
    link = _ui_link(s.get("flow_run_id"))
    if link:
        console.line(f"prefect: flow run {s.get('flow_run')}: {link}")
    if s.get("sheet"):
        console.line(f"picture: {s['sheet']}")
    if s.get("report"):
        print_report(console, s["report"])
    for image_id, error in s["failures"][:10]:
        console.line(f"  failed {image_id}: {error}")
    if len(s["failures"]) > 10:
        console.line(f"  ... and {len(s['failures']) - 10} more (xray inspect {s['store']})")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the store and the picture.")] = Path("out"),
    source: Annotated[str | None, typer.Option(help="Scans; default: generated phantoms.")] = None,
    verbose: Verbose = False,
    log_format: Format = LogFormat.text,
) -> None:
    """The embedded default: run over SOURCE (or 12 generated phantoms) into OUT."""
    import shutil

    from xray_cli.store import sheet

    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        source = str(_phantoms(out / "phantoms"))
    preprocess(source, str(out / "store"), verbose=verbose, log_format=log_format, batch_size=16)
    made = out / "store" / "sheet.png"
    if made.is_file():  # the run's own sample sheet, beside the store
        shutil.copy(made, out / "sheet.png")
    else:  # a rerun with nothing new: draw the first rows
        sheet(store=str(out / "store"), rows="0,1,2", out=out / "sheet.png", storage_options=None)


def _phantoms(folder: Path) -> Path:
    """12 generated phantom scans in ``folder``, half with an opacity."""
    import cv2

    from xraycore.image.synth import phantom_chest

    folder.mkdir(exist_ok=True)
    for i in range(12):
        cv2.imwrite(
            str(folder / f"phantom_{i:03d}.png"),
            phantom_chest(1024, seed=i, opacity=i % 2 == 1),
        )
    typer.echo(f"no source given: generated 12 phantom scans in {folder}")
    return folder
