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

This module checks a run's settings and opens its loaders; the run itself (its
state, batches, epochs, validation and checkpoints) is in :mod:`._run`, the
network, its device and checkpoints in :mod:`._network`, the scores and the ONNX
export in :mod:`._export`, all but :mod:`._run` re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xraycore._validate import check_int, check_positive
from xraycore.predict.contract import ModelContract
from xraycore.train._checkpoint import checkpoint_dir
from xraycore.train._export import cnn_scores, export_cnn_onnx
from xraycore.train._network import (
    ARCHITECTURES,
    EpochResult,
    TrainedCNN,
    build_network,
    cnn_device,
    import_torch,
    load_checkpoint,
    save_checkpoint,
)
from xraycore.train._run import (
    Run,
    finish_training,
    resume_run,
    run_epochs,
    set_schedule,
    start_run,
)
from xraycore.train.lineage import loader_settings, training_lineage

__all__ = [
    "ARCHITECTURES",
    "EpochResult",
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


# ImageNet's statistics: what an ImageNet-trained DenseNet-121 (the DenseNet-121
# report's starting point, given as ``weights``) was trained to see.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseNet-121 halves its input five times: below 32 px nothing is left to pool.
MIN_SIZE = 32


def _check_contract(contract: ModelContract) -> None:
    if contract.layout != "NCHW" or contract.output != "sigmoid":
        raise ValueError(
            "a CNN takes NCHW input and gives sigmoid outputs, got contract layout "
            f"{contract.layout!r} and output {contract.output!r}"
        )
    if contract.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} for a DenseNet, got {contract.size!r}")


def cnn_contract(
    size: int = 224,
    *,
    labels: tuple[str, str] = ("healthy", "pneumonia"),
    findings: tuple[str, ...] = (),
) -> ModelContract:
    """The input contract of a CNN trained here.

    Parameters
    ----------
    size : int, optional
        Input height and width. Default 224, DenseNet-121's ImageNet size.
    labels : (str, str), optional
        Negative and positive label names (a model of one finding).
    findings : tuple of str, optional
        The finding columns of a model of several (one sigmoid each).

    Returns
    -------
    contract : ModelContract
        Three channels (the scan repeated), scaled by 1/255, normalised by
        ImageNet's mean and std, sigmoid outputs.
    """
    contract = ModelContract(
        size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, labels=labels, findings=findings
    )
    _check_contract(contract)
    return contract


def _loaders(store, *, split, validation, targets, uncertain, where, reading):
    """The training split's loader and, when the store has that split with a
    label in ``targets``, the validation one's."""
    from xraycore.train.loader import ScanLoader

    def loader(name: str, shuffle: bool, version: int | None = None):
        return ScanLoader(
            store,
            split=name,
            targets=targets,
            uncertain=uncertain,
            where=where,
            shuffle=shuffle,
            version=version,
            **reading,
        )

    train = loader(split, True)  # pins the store's latest version: both read that one
    if validation is None or validation == split:
        return train, None
    try:
        val = loader(validation, False, train.version)
    except ValueError:  # the training split was read with the same targets: this one is absent
        return train, None
    return train, (val if len(val) else None)


# -- the run ----------------------------------------------------------------------
# Packed a few to a line, in the docstring's order: one a line (ruff's way) would
# take this function past a screen.
def train_cnn(
    store, *, target: str | None = None, targets: list[str] | str | None = None,
    contract: ModelContract | None = None, arch: str = "densenet121",
    split: str = "train", validation: str | None = "validation",
    epochs: int = 1, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, workers: int = 0,
    device: str = "auto", precision: str = "auto", max_steps: int | None = None,
    weights: str | os.PathLike | None = None, where: dict[str, Any] | None = None,
    uncertain: str = "ignore", balance: bool = True, patience: int | None = None,
    freeze_epochs: int = 0, finetune_lr: float | None = None,
    checkpoints: str | os.PathLike | None = None, checkpoint_steps: int | None = None,
    resume: bool = False, storage_options: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainedCNN:  # fmt: skip
    """Train a CNN on a store's split to predict one finding or several.

    Parameters
    ----------
    store : ScanStore or str
    target : str, optional
        One boolean finding column (``finding_pneumonia``): a model of one
        sigmoid whose contract keeps ``labels``.
    targets : list of str or "findings", optional
        Several findings (see :class:`~xraycore.train.loader.ScanLoader`): one
        sigmoid each, the contract's ``findings``, per-finding thresholds
        chosen on the validation split (Youden's J). One of ``target`` and
        ``targets``.
    contract : ModelContract, optional
        Input size and normalisation. Default :func:`cnn_contract` ().
    arch : str
        One of :data:`ARCHITECTURES`.
    split, validation : str
        Rows to train on (default "train"); split scored after every epoch when
        the store has it (default "validation").
    epochs, batch_size, lr : int, int, float
        Adam over a masked binary cross-entropy. Defaults 1, 64 and 1e-3 (seed
        003's batch size and base learning rate).
    seed : int
        Seeds the initial weights and the loader's shuffle.
    workers : int
        DataLoader worker processes reading and preparing batches (0: this one).
    device, precision : str
        See :func:`cnn_device`.
    max_steps : int, optional
        Stop after this many optimiser steps in all (0: only load ``weights``).
    weights : path, optional
        A local state_dict file to start from (:func:`load_checkpoint`).
    where : dict, optional
        Column -> required value.
    uncertain : {"ignore", "zeros", "ones"}
        What an uncertain (-1) label becomes.
    balance : bool
        Weight each finding's positives by the training split's
        negatives/positives (default); False: every label weighs 1.
    patience : int, optional
        Stop after this many epochs without a better mean validation AUROC.
    freeze_epochs : int
        Seed 003's stage one: epochs in which only the head learns (default 0).
    finetune_lr : float, optional
        Learning rate after stage one. Default ``lr / 10`` (seed 003: 1e-4 after 1e-3).
    checkpoints : path, optional
        Folder of the run's checkpoints (``last.pt`` after every epoch and
        every ``checkpoint_steps`` steps, ``best.pt``). None: none written.
    resume : bool
        Go on from ``checkpoints/last.pt``.
    on_epoch : callable, optional
        Called with each :class:`EpochResult`.

    Returns
    -------
    model : TrainedCNN
        The best epoch's weights (by mean validation AUROC; the last epoch's
        without a validation split).
    """
    run = _new_run(**locals())  # every parameter, by name (as pandas' read_csv passes its own)
    if resume:
        resume_run(run)
    run_epochs(run, epochs=epochs, max_steps=max_steps, patience=patience, on_epoch=on_epoch)
    return finish_training(run)


def _new_run(
    store,
    *,
    target,
    targets,
    contract,
    arch,
    split,
    validation,
    epochs,
    batch_size,
    lr,
    seed,
    workers,
    device,
    precision,
    max_steps,
    weights,
    where,
    uncertain,
    balance,
    patience,
    freeze_epochs,
    finetune_lr,
    checkpoints,
    checkpoint_steps,
    resume,
    storage_options,
    on_epoch,
) -> Run:
    """:func:`train_cnn`'s checks, before anything is loaded, then its loaders, the
    contract with the training's lineage, and the :class:`Run` ready for its first
    step (or for :func:`resume_run`). ``on_epoch`` is :func:`run_epochs`'s: it is here
    because :func:`train_cnn` passes every parameter on."""
    numbers = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    finetune_lr = check_positive(lr, "lr") / 10 if finetune_lr is None else finetune_lr
    schedule = {"patience": patience, "freeze_epochs": freeze_epochs, "finetune_lr": finetune_lr}
    contract = _check_training(contract, arch, weights, workers, max_steps, **numbers, **schedule)
    if (target is None) == (targets is None):
        raise ValueError("give target (one finding) or targets (several), not both nor neither")
    _check_checkpoints(checkpoints, checkpoint_steps, resume)
    torch = import_torch()
    device, precision = cnn_device(device, precision)
    selection = {"split": split, "validation": validation, "where": where, "uncertain": uncertain}
    reading = {"batch_size": batch_size, "seed": seed, "storage_options": storage_options}
    train, val = _loaders(store, targets=targets or [target], **selection, reading=reading)
    if target is None:
        contract = dataclasses.replace(contract, findings=train.target_names)
    lineage = training_lineage(
        train.store,
        train.image_ids,
        selection=train.selection,
        loader=loader_settings(train),
        arch=arch,
        epochs=epochs,
        seed=seed,
        validation=val,
        lr=lr,
    )
    contract = dataclasses.replace(contract, training=lineage)
    run = start_run(
        torch, train, val, contract, arch, device, precision, seed=seed, weights=weights
    )
    run.options.update(
        epochs=epochs,
        workers=workers,
        max_steps=max_steps,
        freeze_epochs=freeze_epochs,
        checkpoint_steps=checkpoint_steps,
        checkpoints=None if checkpoints is None else Path(checkpoints),
    )
    run.model.selection = {**selection, "targets": list(train.target_names)}
    run.config = {"arch": arch, "contract": contract.to_dict(), **run.model.selection, **numbers}
    run.config.update(schedule, balance=bool(balance), patience=patience)
    set_schedule(run, balance=balance, lr=lr, finetune_lr=finetune_lr, freeze_epochs=freeze_epochs)
    return run


def _check_checkpoints(checkpoints, checkpoint_steps, resume) -> None:
    if checkpoint_steps is not None:
        check_int(checkpoint_steps, "checkpoint_steps", minimum=1)
        if checkpoints is None:
            raise ValueError("checkpoint_steps needs a checkpoints folder")
    if resume and checkpoints is None:
        raise ValueError("resume needs the checkpoints folder of the run to resume")


def _check_training(
    contract: ModelContract | None,
    arch: str,
    weights,
    workers,
    max_steps,
    *,
    epochs,
    batch_size,
    lr,
    seed,
    patience,
    freeze_epochs,
    finetune_lr,
) -> ModelContract:
    """:func:`train_cnn`'s input checks, before anything is loaded; the contract
    to train under (:func:`cnn_contract`'s default for None)."""
    contract = contract or cnn_contract()
    _check_contract(contract)
    for value, name, minimum in ((epochs, "epochs", 1), (batch_size, "batch_size", 1)):
        check_int(value, name, minimum=minimum)
    check_int(workers, "workers", minimum=0)
    check_int(seed, "seed", minimum=0)
    check_int(freeze_epochs, "freeze_epochs", minimum=0)
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=0)
    if patience is not None:
        check_int(patience, "patience", minimum=1)
    check_positive(lr, "lr")
    check_positive(finetune_lr, "finetune_lr")
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights file {weights} does not exist")
    return contract
