"""``xray train``: a classifier of one finding on a split of a store, exported as
ONNX + contract: the NumPy logistic baseline, or a CNN with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xray_cli.exits import fail
from xray_cli.options import StorageOptions, Where, parse_storage_options, parse_where

__all__ = ["train"]


def _finding(target: str) -> tuple[str, tuple[str, str]]:
    """The metadata column of ``--target`` (Pneumonia or finding_pneumonia) and the
    labels of the model's contract (no pneumonia, pneumonia)."""
    from xraycore.store.columns import absent_label, finding_column, finding_name

    column = finding_column(target)
    return column, (absent_label(column), finding_name(column))


def _train_logistic(store, column, labels, *, size, split, where, out, storage_options) -> None:
    from xraycore.predict.contract import ModelContract
    from xraycore.store import ScanStore
    from xraycore.train.baseline import ScanDataset, export_logistic_onnx, train_logistic
    from xraycore.train.lineage import training_lineage

    try:
        latest = ScanStore.open(store, storage_options)  # pinned: the lineage's version
        pinned = ScanStore.open(store, storage_options, version=latest.version)
        data = ScanDataset(pinned, split=split, target=column, where=where)
        images, y = data.arrays()
        lineage = training_lineage(
            pinned,
            [r["image_id"] for r in data.rows],
            selection={"split": split, "where": where, "target": column},
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
        from xraycore.store.columns import finding_name

        each = ", ".join(
            f"{finding_name(name)} {auc:.3f}" for name, auc in result.validation_auroc.items()
        )
        line += (
            f"; validation loss {result.validation_loss:.4f}, mean AUROC "
            f"{result.validation_mean_auroc:.3f} on {result.validation_count} scans ({each})"
        )
    return line


def _targets(targets: str) -> list[str] | str:
    """``--targets``: ``all`` (every finding column) or a comma-separated list."""
    if targets.strip().lower() == "all":
        return "findings"
    names = [t.strip() for t in targets.split(",") if t.strip()]
    if not names:
        fail(f"--targets must be all or a comma-separated list of findings, got {targets!r}", 2)
    return names


def _train_cnn(store, config, *, out: Path, storage_options) -> None:
    """Train the CNN ``config`` describes (a :class:`~xraycore.train.config.TrainConfig`),
    then export it; a ``ValueError`` or a missing torch is one line, exit 2."""
    from xraycore.train import cnn

    what = config.target or (
        "every finding" if config.targets == "findings" else list(config.targets)
    )
    try:
        device, precision = cnn.cnn_device(config.device, config.precision)
        typer.echo(
            f"training {config.arch} on split {config.split!r} of {store} for {what}: "
            f"{device}, {precision}, {config.contract.size}x{config.contract.size}"
        )
        model = cnn.train_cnn(
            store,
            config,
            storage_options=storage_options,
            on_epoch=lambda result: typer.echo(_epoch_line(result)),
        )
    except (ImportError, ValueError) as exc:
        fail(str(exc), 2)
    cnn.export_cnn_onnx(model, out)
    checkpoint = cnn.save_checkpoint(model.network, out.with_suffix(".pt"))
    best = f", epoch {model.best_epoch} (best)" if model.best_epoch else ""
    resumed = ""
    if model.resumed_step is not None:
        resumed = (
            f" ({model.steps - model.resumed_step} in this run, resumed at step "
            f"{model.resumed_step})"
        )
    typer.echo(
        f"trained {config.arch} for {model.steps} steps{resumed} on {model.scans} scans; "
        f"model{best}: {out} (+ contract {out}.json), weights: {checkpoint}, "
        f"checkpoints: {config.checkpoints}"
    )


def _cnn_contract(arch: str, size: int | None, labels):
    """The CNN's contract (exit 2 naming an unknown ``--arch`` or a bad size)."""
    from xraycore.train import cnn

    if arch not in cnn.ARCHITECTURES:
        fail(f"--arch must be logistic or one of {', '.join(cnn.ARCHITECTURES)}, got {arch!r}", 2)
    try:
        return cnn.cnn_contract(size or 224, **({"labels": labels} if labels else {}))
    except ValueError as exc:
        fail(str(exc), 2)


# The options of ``xray train``, in --help's order. The CNN's defaults are
# TrainConfig's (tests/xray_cli/test_train.py checks they agree): written here, as
# the command line imports no xraycore module before a command runs.
Store = Annotated[str, typer.Argument(help="Store URL (with splits).")]
Target = Annotated[
    str | None,
    typer.Option(help="One finding to predict: Pneumonia or its column finding_pneumonia."),
]
Targets = Annotated[
    str | None,
    typer.Option(help="Several findings, one sigmoid each: all, or A,B,C (densenet121)."),
]
Out = Annotated[Path, typer.Option(help="ONNX file to write.")]
# Plain strings: xraycore.train owns the names it accepts and refuses others (exit 2).
Arch = Annotated[
    str, typer.Option(help="logistic (NumPy baseline) or densenet121 (PyTorch + MONAI).")
]
Size = Annotated[
    int | None, typer.Option(help="Model input size (default 256 logistic, 224 densenet121).")
]
Split = Annotated[str, typer.Option(help="Split to train on.")]
Epochs = Annotated[int, typer.Option(help="Passes over the split.")]
BatchSize = Annotated[int, typer.Option(help="Scans per step.")]
Lr = Annotated[float, typer.Option(help="Adam's learning rate.")]
Seed = Annotated[int, typer.Option(help="Initial weights and shuffle.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when there is a GPU), cpu or cuda.")]
Precision = Annotated[
    str, typer.Option(help="auto (bf16 or fp16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16.")
]
MaxSteps = Annotated[
    int | None, typer.Option(help="Stop after this many steps (0: export --weights).")
]
Weights = Annotated[
    Path | None, typer.Option(help="Local state_dict file to start from (no downloads).")
]
Uncertain = Annotated[str, typer.Option(help="Uncertain (-1) labels: ignore, zeros or ones.")]
Balance = Annotated[
    bool,
    typer.Option(
        "--balance/--no-balance",
        help="Weight each finding's positives by the train split's negatives/positives.",
    ),
]
Patience = Annotated[
    int | None, typer.Option(help="Stop after N epochs without a better validation AUROC.")
]
FreezeEpochs = Annotated[
    int, typer.Option(help="Epochs training only the head (the transfer-learning recipe: 50).")
]
FinetuneLr = Annotated[
    float | None, typer.Option(help="Learning rate after --freeze-epochs (default lr/10).")
]
CheckpointSteps = Annotated[
    int | None, typer.Option(help="Also checkpoint every N steps (always every epoch).")
]
Resume = Annotated[
    bool, typer.Option(help="Go on from the last checkpoint in checkpoints/ next to OUT.")
]

#: The parameters of :func:`train` that only a CNN takes, in --help's order.
CNN_ONLY = (
    "targets",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "workers",
    "device",
    "precision",
    "max_steps",
    "weights",
    "uncertain",
    "balance",
    "patience",
    "freeze_epochs",
    "finetune_lr",
    "checkpoint_steps",
    "resume",
)


def _refuse_cnn_flags(ctx: typer.Context) -> None:
    """Exit 2 naming the flags given on the command line that only a CNN takes:
    the NumPy baseline has no epochs, batches, device, seed or checkpoint."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in CNN_ONLY
        # By name: typer vendors its own click, whose ParameterSource is not click's.
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]
    if given:
        fail(f"{', '.join(given)} only apply to a CNN (--arch densenet121)", 2)


def train(
    ctx: typer.Context,
    store: Store,
    target: Target = None,
    targets: Targets = None,
    out: Out = Path("model.onnx"),
    arch: Arch = "logistic",
    size: Size = None,
    split: Split = "train",
    epochs: Epochs = 1,
    batch_size: BatchSize = 64,
    lr: Lr = 1e-3,
    seed: Seed = 0,
    workers: Workers = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    max_steps: MaxSteps = None,
    weights: Weights = None,
    uncertain: Uncertain = "ignore",
    balance: Balance = True,
    patience: Patience = None,
    freeze_epochs: FreezeEpochs = 0,
    finetune_lr: FinetuneLr = None,
    checkpoint_steps: CheckpointSteps = None,
    resume: Resume = False,
    where: Where = None,
    storage_options: StorageOptions = None,
) -> None:
    """Train a classifier of TARGET (or of several TARGETS) on a split of STORE and
    export ONNX + contract.

    --arch logistic (default) fits the NumPy baseline; --arch densenet121 trains a
    DenseNet-121 with PyTorch (the package's torch extra), in mixed precision on
    CUDA, keeps the epoch of the best mean validation AUROC, checkpoints into
    checkpoints/ next to OUT, and also writes its weights next to OUT (OUT with .pt)."""
    if (target is None) == (targets is None):
        fail("give --target (one finding) or --targets (all, or A,B,C), not both nor neither", 2)
    column, labels = _finding(target) if target is not None else (None, None)
    rows = parse_where(where)
    options = parse_storage_options(storage_options)
    if arch == "logistic":
        _refuse_cnn_flags(ctx)
        _train_logistic(
            store,
            column,
            labels,
            size=size,
            split=split,
            where=rows,
            out=out,
            storage_options=options,
        )
        return
    contract = _cnn_contract(arch, size, labels)
    from xraycore.train.cnn import TrainConfig, checkpoint_dir

    try:
        config = TrainConfig(
            target=column,
            targets=None if targets is None else _targets(targets),
            split=split,
            where=rows,
            uncertain=uncertain,
            arch=arch,
            contract=contract,
            weights=weights,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            freeze_epochs=freeze_epochs,
            finetune_lr=finetune_lr,
            patience=patience,
            balance=balance,
            max_steps=max_steps,
            workers=workers,
            device=device,
            precision=precision,
            checkpoints=checkpoint_dir(out),
            checkpoint_steps=checkpoint_steps,
            resume=resume,
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc), 2)
    _train_cnn(store, config, out=out, storage_options=options)
