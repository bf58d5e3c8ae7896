"""``xray train``: a classifier of one finding on a split of a store, exported as
ONNX + contract: the NumPy logistic baseline, or a CNN with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xray_cli.exits import fail
from xray_cli.options import StorageOptions, parse_storage_options

__all__ = ["train"]


def _finding(target: str) -> tuple[str, tuple[str, str]]:
    """The metadata column of ``--target`` (Pneumonia or finding_pneumonia) and the
    labels of the model's contract (no pneumonia, pneumonia)."""
    from xraycore.store.schema import FINDING_PREFIX, finding_column

    column = finding_column(target)
    name = column.removeprefix(FINDING_PREFIX)
    return column, (f"no {name}", name)


def _train_logistic(store, column, labels, *, size, split, out, storage_options) -> None:
    from xraycore.predict.contract import ModelContract
    from xraycore.store import ScanStore
    from xraycore.train.baseline import ScanDataset, export_logistic_onnx, train_logistic
    from xraycore.train.lineage import training_lineage

    try:
        latest = ScanStore.open(store, storage_options)  # pinned: the lineage's version
        pinned = ScanStore.open(store, storage_options, version=latest.version)
        data = ScanDataset(pinned, split=split, target=column)
        images, y = data.arrays()
        lineage = training_lineage(
            pinned,
            [r["image_id"] for r in data.rows],
            selection={"split": split, "where": None, "target": column},
            loader={"shuffle": False},  # row order, as ScanDataset reads them
            arch="logistic",
            epochs=None,
            seed=0,
        )
        contract = ModelContract(
            labels=labels, training=lineage, **({"size": size} if size else {})
        )
        model = train_logistic(images, y, contract=contract)
    except ValueError as exc:
        fail(str(exc), 2)
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
        fail(f"--arch must be logistic or one of {', '.join(cnn.ARCHITECTURES)}, got {arch!r}", 2)
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
        fail(str(exc), 2)
    cnn.export_cnn_onnx(model, out)
    checkpoint = cnn.save_checkpoint(model.network, out.with_suffix(".pt"))
    typer.echo(
        f"trained {arch} for {model.steps} steps on {model.scans} scans; model: {out} "
        f"(+ contract {out}.json), weights: {checkpoint}"
    )


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
    # What both models are told: the rest of ``given`` is the CNN's alone.
    common = dict(
        size=size, split=split, out=out, storage_options=parse_storage_options(storage_options)
    )
    if arch == "logistic":
        # The NumPy baseline has no epochs, batches, device, seed or checkpoint.
        flags = [f"--{k.replace('_', '-')}" for k in given] + (["--weights"] if weights else [])
        if flags:
            fail(f"{', '.join(flags)} only apply to a CNN (--arch densenet121)", 2)
        _train_logistic(store, column, labels, **common)
        return
    _train_cnn(store, column, labels, arch=arch, weights=weights, **common, **given)
