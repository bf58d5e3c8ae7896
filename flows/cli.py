"""The ``xray`` command line: run, inspect, sheet."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Chest X-ray collections -> Zarr + Parquet training stores.",
)


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{flag} must be a JSON object")
    return value


def _options(text: str | None) -> dict[str, Any] | None:
    return _json_object(text, "--storage-options")


def _open_store(store: str, storage_options: str | None):
    """The store at ``store`` and its attributes; exit 2 when there is none."""
    from xraycore.store import ScanStore

    st = ScanStore.open(store, _options(storage_options))
    info = st.info()
    if info is None:
        _fail(f"{store} is not a store (no images.zarr)", 2)
    return st, info


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix of scans.")],
    out: Annotated[str, typer.Option("--out", help="Store URL (path or s3://...).")],
    labels: Annotated[str | None, typer.Option(help="Data_Entry_2017.csv-style labels.")] = None,
    size: Annotated[int | None, typer.Option(help="Output size S (default 1024).")] = None,
    pipeline: Annotated[Path | None, typer.Option(help="Pipeline spec (.json/.toml).")] = None,
    batch_size: Annotated[int, typer.Option(help="Scans per batch (= per shard).")] = 64,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard a store of another pipeline.")] = False,
    cluster_class: Annotated[
        str | None, typer.Option(help="Dask cluster class, e.g. dask_jobqueue.SLURMCluster.")
    ] = None,
    cluster_kwargs: Annotated[str | None, typer.Option(help="Cluster kwargs, JSON.")] = None,
    classify: Annotated[
        str | None, typer.Option(help="ONNX model: score each batch once committed.")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="Cluster spec: local|existing|kubernetes|slurm or YAML.")
    ] = None,
) -> None:
    """Process SOURCE into the store OUT (resumable: reruns skip finished scans)."""
    from flows.runner import run_preprocess
    from xraycore.storage import redact

    if batch_size < 1:
        raise typer.BadParameter("--batch-size must be >= 1")
    opts = _options(storage_options)
    typer.echo(f"xray run {source} -> {out}" + (f" options {redact(opts)}" if opts else ""))
    try:
        summary = run_preprocess(
            cluster=cluster,
            scheduler=scheduler,
            workers=workers,
            cluster_class=cluster_class,
            cluster_kwargs=_json_object(cluster_kwargs, "--cluster-kwargs"),
            source=source,
            out=out,
            labels=labels,
            size=size,
            pipeline=str(pipeline) if pipeline else None,
            batch_size=batch_size,
            storage_options=opts,
            overwrite=overwrite,
            classify=classify,
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:  # the run itself failed: say so, exit non-zero
        _fail(f"run failed: {type(exc).__name__}: {exc}")
    _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    typer.echo(
        f"done: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped "
        f"in {s['seconds']:.1f} s ({s['images_per_s']:.1f} images/s)"
    )
    typer.echo(f"store: {s['store']} ({s['rows_in_store']} rows, pipeline {s['pipeline_hash']})")
    if s.get("report"):
        _print_report(s["report"])
    if s.get("dashboard"):
        typer.echo(f"dask dashboard (while the cluster ran): {s['dashboard']}")
    for image_id, error in s["failures"][:20]:
        typer.echo(f"  failed {image_id}: {error}")


@app.command()
def inspect(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
) -> None:
    """Print a store's summary and its failed rows."""
    st, info = _open_store(store, storage_options)
    meta = st.read_metadata()
    rows = meta.to_pylist() if meta is not None else []
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    typer.echo(
        f"store {store}: pipeline {info['pipeline_hash']}, size {info['size']}, "
        f"shards of {info['shard_size']}, arrays {', '.join(info['arrays'])}"
    )
    typer.echo(
        f"rows: {len(rows)} ({len(ok)} ok, {len(failed)} failed), array capacity {st.capacity()}"
    )
    for r in failed:
        typer.echo(f"  failed {r['image_id']}: {r['error']}")


@app.command()
def sheet(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    rows: Annotated[str, typer.Option(help="Comma-separated row numbers.")] = "0",
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("sheet.png"),
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
) -> None:
    """Write the comparison picture (original + filters) for a few rows."""
    from xraycore import viz
    from xraycore.io import read_image
    from xraycore.pipeline import fit_to_size
    from xraycore.restore import fuse_channels

    st, info = _open_store(store, storage_options)
    try:
        wanted = [int(r) for r in rows.split(",") if r.strip()]
    except ValueError:
        raise typer.BadParameter(f"--rows must be comma-separated integers, got {rows!r}") from None
    meta = {r["row"]: r for r in (st.read_metadata().to_pylist()) if r["status"] == "ok"}
    panels, titles = [], []
    for row in wanted:
        if row not in meta:
            _fail(f"row {row} is not an ok row of {store}", 2)
        entry = {name: st.read(name, row) for name in info["arrays"] if name != "histogram"}
        original = read_image(meta[row]["source"], **(_options(storage_options) or {}))
        entry["original"] = fit_to_size(fuse_channels(original), info["size"])
        panels.append(entry)
        titles.append(meta[row]["image_id"])
    path = viz.comparison_figure(panels, out, titles=titles)
    typer.echo(f"picture: {path.resolve()}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the store and the picture.")] = Path("out"),
    source: Annotated[str | None, typer.Option(help="Scans; default: generated phantoms.")] = None,
) -> None:
    """The embedded default: run over SOURCE (or 12 generated phantoms) into OUT."""
    import cv2

    from xraycore.synth import phantom_chest

    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        folder = out / "phantoms"
        folder.mkdir(exist_ok=True)
        for i in range(12):
            cv2.imwrite(
                str(folder / f"phantom_{i:03d}.png"),
                phantom_chest(1024, seed=i, opacity=i % 2 == 1),
            )
        source = str(folder)
        typer.echo(f"no source given: generated 12 phantom scans in {folder}")
    run(
        source=source,
        out=str(out / "store"),
        labels=None,
        size=None,
        pipeline=None,
        batch_size=16,
        workers=None,
        scheduler=None,
        storage_options=None,
        overwrite=False,
        cluster_class=None,
        cluster_kwargs=None,
        classify=None,
        cluster=None,
    )
    sheet(store=str(out / "store"), rows="0,1,2", out=out / "sheet.png", storage_options=None)


def _print_report(report: dict) -> None:
    from flows.classify import report_markdown

    typer.echo(report_markdown(report).split("```")[1].strip("\n"))


@app.command()
def classify(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    model: Annotated[str, typer.Option(help="ONNX model (path or URL).")],
    size: Annotated[int | None, typer.Option(help="Contract: input size.")] = None,
    channels: Annotated[int | None, typer.Option(help="Contract: 1 or 3.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Contract: threshold.")] = None,
    output: Annotated[str | None, typer.Option(help="Contract: sigmoid|softmax2.")] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
) -> None:
    """Score every ok row of STORE with MODEL; write predictions (and the report)."""
    from flows.runner import run_classify

    contract = {
        k: v
        for k, v in dict(size=size, channels=channels, threshold=threshold, output=output).items()
        if v is not None
    }
    try:
        result = run_classify(
            scheduler=scheduler,
            workers=workers,
            store=store,
            model=model,
            contract=contract or None,
            storage_options=_options(storage_options),
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:
        _fail(f"classification failed: {type(exc).__name__}: {exc}")
    typer.echo(f"scored {result['scored']} rows of {store} with {model}")
    if result["report"]:
        _print_report(result["report"])


@app.command()
def split(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    fractions: Annotated[str, typer.Option(help="train,validation,test")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the patient assignment.")] = 0,
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
) -> None:
    """Write patient-grouped train/validation/test splits into the metadata."""
    import uuid

    from xraycore.store import ScanStore
    from xraycore.training import assign_splits, write_splits

    try:
        parts = tuple(float(f) for f in fractions.split(","))
    except ValueError:
        raise typer.BadParameter(f"--fractions must be three numbers, got {fractions!r}") from None
    st = ScanStore.open(store, _options(storage_options))
    meta = st.read_metadata()
    if meta is None:
        _fail(f"{store} has no metadata", 2)
    try:
        splits = assign_splits(meta, fractions=parts, seed=seed)
    except ValueError as exc:
        _fail(str(exc), 2)
    write_splits(st, splits, uuid.uuid4().hex[:12])
    counts = {k: splits.count(k) for k in ("train", "validation", "test")}
    typer.echo(f"splits written to {store}: {counts}")


@app.command()
def train(
    store: Annotated[str, typer.Argument(help="Store URL (with splits).")],
    target: Annotated[str, typer.Option(help="Finding to predict, e.g. Pneumonia.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")] = Path("model.onnx"),
    storage_options: Annotated[str | None, typer.Option(help="fsspec options, JSON.")] = None,
) -> None:
    """Train the baseline classifier on the train split and export ONNX + contract."""
    from xraycore.classify import ModelContract
    from xraycore.training import ScanDataset, export_logistic_onnx, train_logistic

    column = target if target.startswith("finding_") else "finding_" + target.lower()
    try:
        data = ScanDataset(
            store, split="train", target=column, storage_options=_options(storage_options)
        )
        images, y = data.arrays()
        contract = ModelContract(labels=(f"no {target.lower()}", target.lower()))
        model = train_logistic(images, y, contract=contract)
    except ValueError as exc:
        _fail(str(exc), 2)
    export_logistic_onnx(model, out)
    typer.echo(
        f"trained on {len(y)} scans ({int(y.sum())} positive); model: {out} (+ contract {out}.json)"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
