"""Convolutional classifiers trained from a store with PyTorch, exported to ONNX.

A DenseNet-121 (MONAI's ``DenseNet121``; seed 004 classifies with one) learns a
boolean finding from the batches of :class:`xraycore.train.loader.ScanLoader`. Every
batch goes through :func:`xraycore.predict.contract.prepare_batch` under the model's
:class:`~xraycore.predict.contract.ModelContract`, in the DataLoader's workers, so
training sees exactly the numbers ``xray classify`` later feeds the exported
ONNX model (resize included: cv2's INTER_AREA, which torch's "area"
interpolation does not reproduce for 1024 -> 224).

Mixed precision on CUDA (bf16 where the GPU has it, else fp16 with a gradient
scaler), fp32 on the CPU. ``torch``, ``monai`` and ``onnxscript`` (the
``torch`` extra) are imported by the functions that use them, never when this
module is imported.

This module is the fit loop; the network, its device and checkpoints are in
:mod:`._network`, the scores and the ONNX export in :mod:`._export`, all
re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xraycore._validate import check_int, check_positive
from xraycore.predict.contract import ModelContract, prepare_batch
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
from xraycore.train.lineage import loader_settings, training_lineage

__all__ = [
    "ARCHITECTURES",
    "EpochResult",
    "TrainedCNN",
    "build_network",
    "cnn_contract",
    "cnn_device",
    "cnn_scores",
    "export_cnn_onnx",
    "load_checkpoint",
    "save_checkpoint",
    "train_cnn",
]


# ImageNet's statistics: what an ImageNet-trained DenseNet-121 (seed 004's
# starting point, given as ``weights``) was trained to see.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseNet-121 halves its input five times: below 32 px nothing is left to pool.
MIN_SIZE = 32


def _check_contract(contract: ModelContract) -> None:
    if contract.layout != "NCHW" or contract.output != "sigmoid":
        raise ValueError(
            "a CNN takes NCHW input and gives one sigmoid output, got contract layout "
            f"{contract.layout!r} and output {contract.output!r}"
        )
    if contract.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} for a DenseNet, got {contract.size!r}")


def cnn_contract(
    size: int = 224, *, labels: tuple[str, str] = ("healthy", "pneumonia")
) -> ModelContract:
    """The input contract of a CNN trained here.

    Parameters
    ----------
    size : int, optional
        Input height and width. Default 224, DenseNet-121's ImageNet size.
    labels : (str, str), optional
        Negative and positive label names.

    Returns
    -------
    contract : ModelContract
        Three channels (the scan repeated), scaled by 1/255, normalised by
        ImageNet's mean and std, one sigmoid output.
    """
    contract = ModelContract(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, labels=labels)
    _check_contract(contract)
    return contract


def _prepare(batch: dict, *, contract: ModelContract):
    """A loader batch as (inputs, targets) tensors; runs in the DataLoader's workers."""
    import torch

    x = prepare_batch(np.asarray(batch["preprocessed"]), contract)
    return torch.from_numpy(x), torch.as_tensor(np.asarray(batch["target"]))


def _one_thread(worker_id: int) -> None:
    # Each DataLoader worker is one process among several: OpenCV's and torch's
    # own thread pools would oversubscribe the cores.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _batches(loader, contract: ModelContract, *, workers: int, device):
    """(inputs, targets) on ``device`` for one pass over ``loader``."""
    from torch.utils.data import DataLoader

    from xraycore.train._torch import worker_context

    options = dict(
        collate_fn=functools.partial(_prepare, contract=contract),
        pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread if workers else None,
    )
    batches = DataLoader(
        loader.to_torch(),
        batch_size=None,  # the loader batches
        num_workers=workers,
        **worker_context(workers, options),
    )
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _loaders(store, *, split, validation, target, where, batch_size, seed, storage_options):
    """The training split's loader and, when the store has that split, the validation one's."""
    from xraycore.train.loader import ScanLoader

    def loader(name: str, shuffle: bool, version: int | None = None):
        return ScanLoader(
            store,
            batch_size=batch_size,
            split=name,
            target=target,
            where=where,
            shuffle=shuffle,
            seed=seed,
            storage_options=storage_options,
            version=version,
        )

    train = loader(split, True)  # pins the store's latest version: both read that one
    if not len(train):
        raise ValueError(f"split {split!r} has no rows labelled in {target!r}: nothing to train on")
    if validation is None or validation == split:
        return train, None
    try:
        val = loader(validation, False, train.version)
    except ValueError:  # the training split was read with the same target: this split is absent
        return train, None
    return train, (val if len(val) else None)


def _fit(network, batches, optimiser, scaler, *, autocast, limit: int | None):
    """One pass of optimiser steps (at most ``limit``); the loss of each step and
    the number of scans seen."""
    import torch

    network.train()
    losses, scans = [], 0
    for x, y in batches:
        if limit is not None and len(losses) >= limit:
            break
        with autocast():
            logits = network(x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        losses.append(loss.detach())  # no .item() here: it would wait for the GPU every step
        scans += len(y)
    return (torch.stack(losses).tolist() if losses else []), scans


def _evaluate(network, loader, contract, *, workers, device, autocast):
    import torch
    import torch.nn.functional as F

    network.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for x, y in _batches(loader, contract, workers=workers, device=device):
            with autocast():
                logits = network(x).squeeze(1)
            logits = logits.float()
            loss += F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")
            correct += ((torch.sigmoid(logits) > contract.threshold) == y.bool()).sum()
            count += len(y)
    return float(loss) / count, float(correct) / count, int(count)


def train_cnn(
    store,
    *,
    target: str,
    contract: ModelContract | None = None,
    arch: str = "densenet121",
    split: str = "train",
    validation: str | None = "validation",
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
    max_steps: int | None = None,
    weights: str | os.PathLike | None = None,
    where: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainedCNN:
    """Train a CNN on a store's split to predict a boolean metadata column.

    Parameters
    ----------
    store : ScanStore or str
    target : str
        Boolean metadata column, e.g. ``finding_pneumonia``.
    contract : ModelContract, optional
        Input size, normalisation and labels. Default :func:`cnn_contract` ().
    arch : str
        One of :data:`ARCHITECTURES`.
    split : str
        Rows to train on. Default "train".
    validation : str or None
        Split scored after every epoch (loss and accuracy) when the store has it.
    epochs, batch_size, lr : int, int, float
        Adam over binary cross-entropy. Defaults 1, 64 and 1e-3 (seed 003's batch
        size and base learning rate).
    seed : int
        Seeds the initial weights and the loader's shuffle.
    workers : int
        DataLoader worker processes reading and preparing batches (0: this one).
    device, precision : str
        See :func:`cnn_device`.
    max_steps : int, optional
        Stop after this many optimiser steps (0: only load ``weights``).
    weights : path, optional
        A local state_dict file to start from (:func:`load_checkpoint`).
    where : dict, optional
        Column -> required value, as :class:`~xraycore.train.loader.ScanLoader` takes it.
    on_epoch : callable, optional
        Called with each :class:`EpochResult`.

    Returns
    -------
    model : TrainedCNN
    """
    numbers = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    contract = _check_training(contract, arch, weights, workers, max_steps, **numbers)
    torch = import_torch()
    device, precision = cnn_device(device, precision)
    rows = {"split": split, "validation": validation, "target": target, "where": where}
    reading = {"batch_size": batch_size, "seed": seed, "storage_options": storage_options}
    train, val = _loaders(store, **rows, **reading)
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
    dev = torch.device(device)
    network = _network_on(dev, arch, contract, seed=seed, weights=weights)
    step = _mixed_precision(torch, dev, precision)  # autocast and scaler
    step["optimiser"] = torch.optim.Adam(network.parameters(), lr=lr)
    model = TrainedCNN(network, contract, arch, device, precision)
    for epoch in range(epochs):
        if max_steps is not None and model.steps >= max_steps:
            break
        result = _train_epoch(model, train, val, epoch, epochs, max_steps, workers, dev, **step)
        model.epochs.append(result)
        if on_epoch is not None:
            on_epoch(result)
    network.to("cpu").float().eval()
    return model


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
) -> ModelContract:
    """:func:`train_cnn`'s input checks, before anything is loaded; the contract
    to train under (:func:`cnn_contract`'s default for None)."""
    contract = contract or cnn_contract()
    _check_contract(contract)
    for value, name, minimum in ((epochs, "epochs", 1), (batch_size, "batch_size", 1)):
        check_int(value, name, minimum=minimum)
    check_int(workers, "workers", minimum=0)
    check_int(seed, "seed", minimum=0)
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=0)
    check_positive(lr, "lr")
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights file {weights} does not exist")
    return contract


def _network_on(dev, arch: str, contract: ModelContract, *, seed: int, weights):
    """A fresh network (``weights`` loaded when given) moved onto ``dev``."""
    network = build_network(arch, channels=contract.channels, seed=seed)
    if weights is not None:
        load_checkpoint(network, weights)
    network.to(dev)
    return network


def _mixed_precision(torch, dev, precision: str):
    """``autocast`` (a context factory for the forward pass) and the gradient ``scaler``."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = functools.partial(
        torch.autocast, device_type=dev.type, dtype=dtype, enabled=dtype is not None
    )
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    return {"autocast": autocast, "scaler": scaler}


def _train_epoch(
    model: TrainedCNN,
    train,
    val,
    epoch: int,
    epochs: int,
    max_steps: int | None,
    workers: int,
    device,
    *,
    optimiser,
    scaler,
    autocast,
) -> EpochResult:
    """One epoch of ``train`` (up to ``max_steps`` steps in all) counted into
    ``model``, then the validation loader ``val`` (None: no validation) scored."""
    limit = None if max_steps is None else max_steps - model.steps
    t0 = time.perf_counter()
    train.set_epoch(epoch)
    network, contract = model.network, model.contract
    batches = _batches(train, contract, workers=workers, device=device)
    losses, scans = _fit(network, batches, optimiser, scaler, autocast=autocast, limit=limit)
    model.steps += len(losses)
    model.scans += scans
    model.losses += losses
    v_loss, v_acc, v_n = None, None, 0
    if val is not None:
        v_loss, v_acc, v_n = _evaluate(
            network, val, contract, workers=workers, device=device, autocast=autocast
        )
    return EpochResult(
        epoch=epoch + 1,
        epochs=epochs,
        steps=len(losses),
        loss=float(np.mean(losses)),
        seconds=time.perf_counter() - t0,
        validation_loss=v_loss,
        validation_accuracy=v_acc,
        validation_count=v_n,
    )
