"""The ``xray`` command line: run, inspect, verify, sheet, demo, classify, split, train.

It sits above the flows: it imports them (lazily, after setting up logging),
never the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Chest X-ray collections -> Zarr + Parquet training stores.",
)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect's and Dask's own INFO logs.")
]
Format = Annotated[
    LogFormat, typer.Option("--log-format", help="text (a bar on a terminal) or json lines.")
]
StorageOptions = Annotated[
    str | None,
    typer.Option(help="fsspec options, JSON (no credentials: see --aws-credentials)."),
]
AwsCredentials = Annotated[
    str | None,
    typer.Option(help="Name of a prefect-aws AwsCredentials block holding the S3 credentials."),
]


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


def _cluster(
    cluster: str | None,
    scheduler: str | None = None,
    workers: int | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: str | None = None,
) -> str | dict[str, Any] | None:
    """The flows' one ``cluster`` value from the CLI's cluster flags: an address
    (``--scheduler``), or a spec (``--cluster``, ``--cluster-class``, else a
    LocalCluster) with ``--cluster-kwargs`` and ``--workers`` on top, or
    ``--cluster`` as it is, or None (the flows' default)."""
    if scheduler:
        return {"address": scheduler}
    kwargs = _json_object(cluster_kwargs, "--cluster-kwargs") or {}
    if workers is not None:
        if workers < 1:
            raise typer.BadParameter(f"--workers must be >= 1, got {workers}")
        kwargs["n_workers"] = workers
    if not (cluster_class or kwargs) or (cluster and "://" in cluster):
        return cluster  # a spec name, a YAML path, an address, or None
    from flows.cluster import DEFAULT_CLUSTER, load_cluster_spec

    if cluster_class or not cluster:
        spec = {"cluster_class": cluster_class or DEFAULT_CLUSTER}
    else:
        try:
            spec = load_cluster_spec(cluster)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if spec.get("address"):  # an existing cluster: its size is not ours to set
        return spec
    return {**spec, "cluster_kwargs": {**(spec.get("cluster_kwargs") or {}), **kwargs}}


def _open_store(store: str, storage_options: str | None):
    """The store at ``store`` and its attributes; exit 2 when there is none, or
    when it is of another format or cannot be opened (one ``error:`` line)."""
    from xraycore.store import ScanStore
    from xraycore.store.schema import IMAGES

    try:
        st = ScanStore.open(store, _options(storage_options))
        info = st.info()
    except ValueError as exc:  # another format (with how to rebuild), bad options
        _fail(str(exc), 2)
    if info is None:
        _fail(f"{store} is not a store (no {IMAGES})", 2)
    return st, info


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` refused the run before any work (exit 2): credentials in the
    options, a store held by another run or of another pipeline or format, a
    missing input, or a bad parameter (the project's own checks raise a plain
    ValueError; a library's error while reading a file subclasses it: exit 1)."""
    from xraycore.store import StoreConflictError, StoreFormatError
    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.storage import CredentialsRefusedError

    refusals = (
        CredentialsRefusedError,
        LeaseHeldError,
        StoreConflictError,
        StoreFormatError,
        FileNotFoundError,
    )
    return isinstance(exc, refusals) or type(exc) is ValueError


def _run_flow(flow_name: str, console, *, verbose: bool, **params: Any) -> dict[str, Any]:
    """Run a flow with ``console`` observing it; a refusal exits 2, a failed run 1,
    each with one ``error:`` line (and Prefect's traceback only with ``-v``)."""
    from flows.progress import observe
    from flows.server import run_flow

    if flow_name == "preprocess":
        from flows.preprocess import preprocess_dataset as flow
    else:
        from flows.classify import classify_store as flow
    if not verbose:
        from xray_cli.console import one_line_errors

        one_line_errors()
    try:
        with observe(console):
            return run_flow(flow, **params)
    except Exception as exc:
        console.close()
        if _refused(exc):
            _fail(str(exc), 2)
        hint = " (rerun to resume)" if isinstance(exc, ValueError) else ""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = " (the store's disk or quota is full: free space, then rerun to resume)"
        _fail(f"run failed: {type(exc).__name__}: {exc}{hint}")
    finally:
        console.close()


def _console(verbose: bool, log_format: LogFormat):
    from xray_cli.console import RunConsole, quiet_libraries

    quiet_libraries(verbose=verbose, log_format=log_format.value)
    return RunConsole(log_format=log_format.value)


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix of scans.")],
    store: Annotated[str, typer.Option("--store", "--out", help="Store URL (path or s3://...).")],
    labels: Annotated[str | None, typer.Option(help="Data_Entry_2017.csv-style labels.")] = None,
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
    verbose: Verbose = False,
    log_format: Format = LogFormat.text,
) -> None:
    """Process SOURCE into STORE (resumable: reruns skip finished scans).

    One run writes a store at a time: another run's store is refused (exit 2)
    unless --wait."""
    if batch_size is not None and batch_size < 1:
        raise typer.BadParameter("--batch-size must be >= 1")
    _preprocess(
        source,
        store,
        verbose=verbose,
        log_format=log_format,
        cluster=_cluster(cluster, scheduler, workers, cluster_class, cluster_kwargs),
        labels=labels,
        size=size,
        pipeline=str(pipeline) if pipeline else None,
        batch_size=batch_size,
        storage_options=_options(storage_options),
        aws_credentials=aws_credentials,
        overwrite=overwrite,
        model=model,
        wait_for_lease=wait,
        break_lease=break_lease,
    )


def _preprocess(
    source: str, store: str, *, verbose: bool, log_format: LogFormat, **params: Any
) -> None:
    """``xray run``: the preprocessing flow with ``params`` (the flow's defaults for
    the others), its phases on the terminal, then the summary."""
    console = _console(verbose, log_format)
    console.line(f"xray run {source} -> {store}", "start", source=source, store=store)
    summary = _run_flow(
        "preprocess", console, verbose=verbose, source=source, store=store, **params
    )
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
        _print_report(console, s["report"])
    for image_id, error in s["failures"][:10]:
        console.line(f"  failed {image_id}: {error}")
    if len(s["failures"]) > 10:
        console.line(f"  ... and {len(s['failures']) - 10} more (xray inspect {s['store']})")


def _print_report(console, report: dict) -> None:
    from xraycore.predict.report import report_text

    console.line(report_text(report).rstrip("\n"))


@app.command()
def inspect(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    storage_options: StorageOptions = None,
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


PROBLEMS_SHOWN = 20


@contextlib.contextmanager
def _executor(scheduler: str | None, workers: int | None):
    """Where verify reads shards: a Dask cluster's executor, or threads here (None)."""
    if not (scheduler or workers):
        yield None
        return
    from flows.cluster import DaskCluster, resolve_cluster

    with DaskCluster(resolve_cluster(_cluster(None, scheduler, workers))) as cluster:
        yield cluster.client().get_executor()


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    repair: Annotated[
        bool,
        typer.Option(help="Mark bad rows failed (the next run redoes them); merge leftovers."),
    ] = False,
    deep: Annotated[bool, typer.Option(help="Read every array, not only preprocessed.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Check shards on a LocalCluster of N processes.")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    storage_options: StorageOptions = None,
) -> None:
    """Re-read STORE and report rows whose pixels are missing, unreadable or differ
    from their checksum, orphaned or shared rows, duplicate sources, and parts or a
    lease left by a killed run. Exit 1 when anything is wrong."""
    import uuid

    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.verify import repair_store, verify_store

    st, _ = _open_store(store, storage_options)
    try:
        with _executor(scheduler, workers) as executor:
            report = verify_store(st, executor=executor, deep=deep)
    except ValueError as exc:
        _fail(str(exc), 2)
    typer.echo(report.summary())
    if report.writer:
        typer.echo(f"note: {report.writer}; its batches not yet committed are not checked")
    for problem in report.problems[:PROBLEMS_SHOWN]:
        typer.echo(f"  {problem}")
    if len(report.problems) > PROBLEMS_SHOWN:
        typer.echo(f"  ... and {len(report.problems) - PROBLEMS_SHOWN} more")
    if report.clean:
        return
    if repair:
        try:
            done = repair_store(st, report, run_id=f"verify-{uuid.uuid4().hex[:8]}")
        except LeaseHeldError as exc:
            _fail(str(exc), 2)
        typer.echo(
            f"repaired: {done['rows']} rows marked failed (the next `xray run` redoes them), "
            f"{done['parts']} datasets compacted, {done['files']} temporary files removed"
        )
    raise typer.Exit(1)


@app.command()
def sheet(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    rows: Annotated[
        str | None,
        typer.Option(help="Comma-separated row numbers (default: the first 3 ok rows)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("sheet.png"),
    storage_options: StorageOptions = None,
) -> None:
    """Write the comparison picture (original + filters) for a few rows."""
    from xraycore.predict.report import comparison_sheet

    st, _ = _open_store(store, storage_options)
    if rows is None:
        meta = st.read_metadata()
        ok = [] if meta is None else [r["row"] for r in meta.to_pylist() if r["status"] == "ok"]
        if not ok:
            _fail(f"{store} has no ok rows to show", 2)
        wanted = sorted(ok)[:3]
    else:
        try:
            wanted = [int(r) for r in rows.split(",") if r.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"--rows must be comma-separated integers, got {rows!r}"
            ) from None
    try:
        path = comparison_sheet(st, wanted, out, source_options=_options(storage_options))
    except ValueError as exc:
        _fail(str(exc), 2)
    typer.echo(f"picture: {path.resolve()}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the store and the picture.")] = Path("out"),
    source: Annotated[str | None, typer.Option(help="Scans; default: generated phantoms.")] = None,
    verbose: Verbose = False,
    log_format: Format = LogFormat.text,
) -> None:
    """The embedded default: run over SOURCE (or 12 generated phantoms) into OUT."""
    import shutil

    import cv2

    from xraycore.image.synth import phantom_chest

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
    _preprocess(source, str(out / "store"), verbose=verbose, log_format=log_format, batch_size=16)
    made = out / "store" / "sheet.png"
    if made.is_file():  # the run's own sample sheet, beside the store
        shutil.copy(made, out / "sheet.png")
    else:  # a rerun with nothing new: draw the first rows
        sheet(store=str(out / "store"), rows="0,1,2", out=out / "sheet.png", storage_options=None)


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
    cluster = _cluster(None, scheduler, workers)
    console = _console(verbose, log_format)
    result = _run_flow(
        "classify",
        console,
        verbose=verbose,
        cluster=cluster,
        store=store,
        model=model,
        contract=contract or None,
        storage_options=_options(storage_options),
        aws_credentials=aws_credentials,
    )
    console.line(f"scored {result['scored']} rows of {store} with {model}", "summary", **result)
    if result["report"] and not console.json:
        _print_report(console, result["report"])


@app.command()
def split(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    fractions: Annotated[str, typer.Option(help="train,validation,test")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the patient assignment.")] = 0,
    storage_options: StorageOptions = None,
) -> None:
    """Write patient-grouped train/validation/test splits into the metadata."""
    import uuid

    from xraycore.train.baseline import assign_splits, write_splits

    try:
        parts = tuple(float(f) for f in fractions.split(","))
    except ValueError:
        raise typer.BadParameter(f"--fractions must be three numbers, got {fractions!r}") from None
    st, _ = _open_store(store, storage_options)
    meta = st.read_metadata()
    if meta is None:
        _fail(f"{store} has no metadata", 2)
    try:
        splits = assign_splits(meta, fractions=parts, seed=seed)
        write_splits(st, splits, uuid.uuid4().hex[:12])
    except ValueError as exc:
        _fail(str(exc), 2)
    counts = {k: splits.count(k) for k in ("train", "validation", "test")}
    typer.echo(f"splits written to {store}: {counts}")


def _finding(target: str) -> tuple[str, tuple[str, str]]:
    """The metadata column of ``--target`` (Pneumonia or finding_pneumonia) and the
    labels of the model's contract (no pneumonia, pneumonia)."""
    from xraycore.store.schema import FINDING_PREFIX, finding_column

    column = finding_column(target)
    name = column.removeprefix(FINDING_PREFIX)
    return column, (f"no {name}", name)


def _train_logistic(store, column, labels, *, size, split, out, storage_options) -> None:
    from xraycore.predict.contract import ModelContract
    from xraycore.train.baseline import ScanDataset, export_logistic_onnx, train_logistic

    try:
        data = ScanDataset(store, split=split, target=column, storage_options=storage_options)
        images, y = data.arrays()
        contract = ModelContract(labels=labels, **({"size": size} if size else {}))
        model = train_logistic(images, y, contract=contract)
    except ValueError as exc:
        _fail(str(exc), 2)
    export_logistic_onnx(model, out)
    typer.echo(
        f"trained on {len(y)} scans ({int(y.sum())} positive); model: {out} (+ contract {out}.json)"
    )


def _epoch_line(result) -> str:
    line = (
        f"epoch {result.epoch}/{result.epochs}: loss {result.loss:.4f} "
        f"({result.steps} steps, {result.seconds:.1f} s)"
    )
    if result.validation_count:
        line += (
            f"; validation loss {result.validation_loss:.4f}, "
            f"accuracy {result.validation_accuracy:.3f} on {result.validation_count} scans"
        )
    return line


def _train_cnn(store, column, labels, *, arch, size, split, out, storage_options, **options):
    from xraycore.train import cnn

    if arch not in cnn.ARCHITECTURES:
        _fail(f"--arch must be logistic or one of {', '.join(cnn.ARCHITECTURES)}, got {arch!r}", 2)
    try:
        device, precision = cnn.cnn_device(
            options.pop("device", "auto"), options.pop("precision", "auto")
        )
        contract = cnn.cnn_contract(size or 224, labels=labels)
        typer.echo(
            f"training {arch} on split {split!r} of {store} for {column}: {device}, {precision}, "
            f"{contract.size}x{contract.size}"
        )
        model = cnn.train_cnn(
            store,
            target=column,
            contract=contract,
            arch=arch,
            split=split,
            device=device,
            precision=precision,
            storage_options=storage_options,
            on_epoch=lambda result: typer.echo(_epoch_line(result)),
            **options,
        )
    except (ImportError, ValueError) as exc:
        _fail(str(exc), 2)
    cnn.export_cnn_onnx(model, out)
    checkpoint = cnn.save_checkpoint(model.network, out.with_suffix(".pt"))
    typer.echo(
        f"trained {arch} for {model.steps} steps on {model.scans} scans; model: {out} "
        f"(+ contract {out}.json), weights: {checkpoint}"
    )


@app.command()
def train(
    store: Annotated[str, typer.Argument(help="Store URL (with splits).")],
    target: Annotated[
        str, typer.Option(help="Finding to predict: Pneumonia or its column finding_pneumonia.")
    ],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")] = Path("model.onnx"),
    # Plain strings: xraycore.train.cnn owns the names it accepts and refuses others (exit 2).
    arch: Annotated[
        str, typer.Option(help="logistic (NumPy baseline) or densenet121 (PyTorch + MONAI).")
    ] = "logistic",
    size: Annotated[
        int | None, typer.Option(help="Model input size (default 256 logistic, 224 densenet121).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    epochs: Annotated[int | None, typer.Option(help="Passes over the split (default 1).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Scans per step (default 64).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam's learning rate (default 1e-3).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Initial weights and shuffle (default 0).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (default 0).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto (CUDA when there is a GPU), cpu or cuda.")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 or fp16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps (0: export --weights).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local state_dict file to start from (no downloads).")
    ] = None,
    storage_options: StorageOptions = None,
) -> None:
    """Train a classifier of TARGET on a split of STORE and export ONNX + contract.

    --arch logistic (default) fits the NumPy baseline; --arch densenet121 trains a
    DenseNet-121 with PyTorch (the package's torch extra), in mixed
    precision on CUDA, and also writes its weights next to OUT (OUT with .pt)."""
    column, labels = _finding(target)
    given = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        workers=workers,
        device=device,
        precision=precision,
        max_steps=max_steps,
    )
    given = {k: v for k, v in given.items() if v is not None}  # the CNN's defaults for the rest
    opts = _options(storage_options)
    if arch == "logistic":
        # The NumPy baseline has no epochs, batches, device, seed or checkpoint.
        flags = [f"--{k.replace('_', '-')}" for k in given] + (["--weights"] if weights else [])
        if flags:
            _fail(f"{', '.join(flags)} only apply to a CNN (--arch densenet121)", 2)
        _train_logistic(
            store, column, labels, size=size, split=split, out=out, storage_options=opts
        )
        return
    _train_cnn(
        store,
        column,
        labels,
        arch=arch,
        size=size,
        split=split,
        out=out,
        storage_options=opts,
        weights=weights,
        **given,
    )


@app.command()
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
