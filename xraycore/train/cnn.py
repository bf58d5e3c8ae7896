"""Convolutional classifiers trained from a store with PyTorch, exported to ONNX.

A DenseNet-121 (MONAI's ``DenseNet121``; the DenseNet-121 report classifies with one) learns one
finding, or several at once (one sigmoid each, as CheXNet), from the batches of
:class:`xraycore.train.loader.ScanLoader`, with a masked binary cross-entropy
whose positives are weighted per finding by the training split's
negatives/positives. Each epoch is scored on the validation split by each
finding's AUROC; the best epoch by their mean is what is kept. Seed 003's
two-stage schedule (:mod:`._schedule`) and checkpoints that resume a killed run
exactly (:mod:`._checkpoint`) are options. Every
batch goes through :func:`xraycore.predict.contract.prepare_batch` under the model's
:class:`~xraycore.predict.contract.ModelContract`, in the DataLoader's workers, so
training sees exactly the numbers ``xray classify`` later feeds the exported
ONNX model (resize included: cv2's INTER_AREA, which torch's "area"
interpolation does not reproduce for 1024 -> 224).

Mixed precision on CUDA (bf16 where the GPU has it, else fp16 with a gradient
scaler), fp32 on the CPU. ``torch``, ``monai`` and ``onnxscript`` (the
``torch`` extra) are imported by the functions that use them, never when this
module is imported.

A run's settings are one :class:`~xraycore.train.config.TrainConfig`, checked
when it is made. This module opens a run's loaders and writes its lineage; the
run itself (its state, batches, epochs, validation and checkpoints) is in
:mod:`._run`, the network, its contract, device and checkpoints in
:mod:`._network`, the scores and the ONNX export in :mod:`._export`, all but
:mod:`._run` re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from xraycore.train._checkpoint import checkpoint_dir
from xraycore.train._export import cnn_scores, export_cnn_onnx
from xraycore.train._network import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_SIZE,
    EpochResult,
    TrainedCNN,
    build_network,
    cnn_contract,
    cnn_device,
    import_torch,
    load_checkpoint,
    save_checkpoint,
)
from xraycore.train._run import Run, finish_training, resume_run, run_epochs, start_run
from xraycore.train.config import TrainConfig
from xraycore.train.lineage import loader_settings, training_lineage

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_SIZE",
    "EpochResult",
    "TrainConfig",
    "TrainedCNN",
    "build_network",
    "checkpoint_dir",
    "cnn_contract",
    "cnn_device",
    "cnn_scores",
    "export_cnn_onnx",
    "load_checkpoint",
    "save_checkpoint",
    "train_cnn",
]


def train_cnn(
    store,
    config: TrainConfig,
    *,
    storage_options: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainedCNN:
    """Train a CNN on a store's split to predict one finding or several.

    Parameters
    ----------
    store : ScanStore or str
        The store (or its URL) to read the rows from, at its latest version.
    config : TrainConfig
        The run: selection, model, schedule, loader, device and checkpoints.
    storage_options : dict, optional
        fsspec options to open a store given by URL (S3 credentials...).
    on_epoch : callable, optional
        Called with each :class:`EpochResult`.

    Returns
    -------
    model : TrainedCNN
        The best epoch's weights (by mean validation AUROC; the last epoch's
        without a validation split).

    Examples
    --------
    >>> from xraycore.train.cnn import TrainConfig, cnn_contract, export_cnn_onnx, train_cnn
    >>> config = TrainConfig(targets="findings", contract=cnn_contract(224), epochs=10)
    >>> model = train_cnn("s3://bucket/stores/cxr8", config)  # doctest: +SKIP
    >>> export_cnn_onnx(model, "model.onnx")  # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    run = _new_run(store, config, storage_options)
    if config.resume:
        resume_run(run)
    run_epochs(run, on_epoch=on_epoch)
    return finish_training(run)


def _new_run(store, config: TrainConfig, storage_options) -> Run:
    """The run's loaders, its contract with the training's lineage, and the
    :class:`Run` ready for its first step (or for :func:`resume_run`)."""
    if config.weights is not None and not config.weights.is_file():
        raise ValueError(f"weights file {config.weights} does not exist")
    torch = import_torch()
    device, precision = cnn_device(config.device, config.precision)
    train, val = _loaders(store, config, storage_options)
    contract = config.contract
    if config.target is None:
        contract = dataclasses.replace(contract, findings=train.target_names)
    lineage = training_lineage(
        train.store,
        train.image_ids,
        selection=train.selection,
        loader=loader_settings(train),
        arch=config.arch,
        epochs=config.epochs,
        seed=config.seed,
        validation=val,
        lr=config.lr,
    )
    contract = dataclasses.replace(contract, training=lineage)
    return start_run(torch, train, val, contract, config, device=device, precision=precision)


def _loaders(store, config: TrainConfig, storage_options):
    """The training split's loader and, when the store has that split with a
    label in the run's targets, the validation one's."""
    from xraycore.train.loader import ScanLoader

    def loader(name: str, shuffle: bool, version: int | None = None):
        return ScanLoader(
            store,
            split=name,
            targets=config.label_columns,
            uncertain=config.uncertain,
            where=config.where,
            shuffle=shuffle,
            version=version,
            batch_size=config.batch_size,
            seed=config.seed,
            storage_options=storage_options,
        )

    train = loader(config.split, True)  # pins the store's latest version: both read that one
    if config.validation is None or config.validation == config.split:
        return train, None
    try:
        val = loader(config.validation, False, train.version)
    except ValueError:  # the training split was read with the same targets: this one is absent
        return train, None
    return train, (val if len(val) else None)
