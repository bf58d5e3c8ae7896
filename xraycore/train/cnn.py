"""Convolutional classifiers trained from a store with PyTorch, exported to ONNX.

A DenseNet-121 (MONAI's ``DenseNet121``; seed 004 classifies with one) learns one
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

This module is the fit loop; the network, its device and checkpoints are in
:mod:`._network`, the scores and the ONNX export in :mod:`._export`, all
re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xraycore._validate import check_int, check_positive
from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.predict.roc import roc_auc, youden_threshold
from xraycore.train._checkpoint import BEST, LAST, checkpoint_dir, load_state, save_state
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
from xraycore.train._schedule import lr_schedule, masked_bce, set_stage
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


# ImageNet's statistics: what an ImageNet-trained DenseNet-121 (seed 004's
# starting point, given as ``weights``) was trained to see.
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


def _prepare(batch: dict, *, contract: ModelContract):
    """A loader batch as (inputs, targets, mask) tensors; runs in the DataLoader's
    workers. Targets are (B, K) float32; a batch of one label column is (B, 1)."""
    import torch

    x = prepare_batch(np.asarray(batch["preprocessed"]), contract)
    y = np.asarray(batch["target"], np.float32)
    y = y.reshape(len(y), -1)
    mask = batch.get("target_mask")
    mask = np.ones(y.shape, bool) if mask is None else np.asarray(mask).reshape(y.shape)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)


def _one_thread(worker_id: int) -> None:
    # Each DataLoader worker is one process among several: OpenCV's and torch's
    # own thread pools would oversubscribe the cores.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _batches(loader, contract: ModelContract, *, workers: int, device):
    """(inputs, targets, mask) on ``device`` for one pass over ``loader`` from
    where it stands."""
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
    for x, y, m in batches:
        yield tuple(t.to(device, non_blocking=True) for t in (x, y, m))


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


@dataclasses.dataclass
class _Run:
    """What one training run holds between steps, and what its checkpoints save."""

    model: TrainedCNN
    train: Any
    val: Any
    optimiser: Any
    scaler: Any
    scheduler: Any
    autocast: Any
    pos_weight: Any
    device: Any
    options: dict[str, Any]
    config: dict[str, Any]
    epoch_losses: list[float] = dataclasses.field(default_factory=list)
    best_score: float = -math.inf
    best_state: dict | None = None
    thresholds: tuple[float, ...] = ()
    since_best: int = 0

    @property
    def folder(self) -> Path | None:
        return self.options["checkpoints"]


def _fit(run: _Run, epoch: int) -> None:
    """Steps of epoch ``epoch`` from where the loader stands, up to its end or
    ``max_steps``; each step's loss kept, a checkpoint every ``checkpoint_steps``."""
    model, opts = run.model, run.options
    frozen = epoch < opts["freeze_epochs"]
    set_stage(model.network, frozen=frozen)
    every = opts["checkpoint_steps"]
    for x, y, m in _batches(run.train, model.contract, workers=opts["workers"], device=run.device):
        if opts["max_steps"] is not None and model.steps >= opts["max_steps"]:
            break
        with run.autocast():
            logits = model.network(x)
        loss = masked_bce(logits.float(), y, m, run.pos_weight)
        run.optimiser.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimiser)
        run.scaler.update()
        # One number per step: a checkpoint needs the losses so far as floats anyway.
        run.epoch_losses.append(float(loss.detach()))
        run.train.consumed += 1
        model.steps += 1
        model.scans += len(y)
        if every and model.steps % every == 0 and run.train.consumed < len(run.train):
            _save_last(run)


def _validate(run: _Run):
    """The validation split's loss (unweighted), per-finding AUROC and their mean,
    the scans scored, and each finding's scores and labels."""
    import torch

    model, network = run.model, run.model.network
    network.eval()
    run.val.set_epoch(0)
    scores, targets, masks, loss, counted = [], [], [], 0.0, 0
    with torch.no_grad():
        batches = _batches(
            run.val, model.contract, workers=run.options["workers"], device=run.device
        )
        for x, y, m in batches:
            with run.autocast():
                logits = network(x)
            logits = logits.float()
            loss += float(masked_bce(logits, y, m, None)) * int(m.sum())
            counted += int(m.sum())
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(y.cpu().numpy())
            masks.append(m.cpu().numpy())
    s, t, k = (np.concatenate(a) for a in (scores, targets, masks))
    names = _finding_names(model.contract, run.train)
    auroc = {n: roc_auc(t[k[:, i], i], s[k[:, i], i]) for i, n in enumerate(names)}
    defined = [v for v in auroc.values() if not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else math.nan
    return loss / max(counted, 1), auroc, mean, len(s), (s, t, k)


def _finding_names(contract: ModelContract, train) -> tuple[str, ...]:
    return contract.findings or tuple(train.target_names)


def _end_epoch(run: _Run, epoch: int, seconds: float) -> EpochResult:
    """Score the epoch on the validation split, keep it if it is the best, and
    count the epochs since the best (``run.since_best``, for patience)."""
    model = run.model
    v_loss, auroc, mean, count, found = None, {}, None, 0, None
    if run.val is not None:
        v_loss, auroc, mean, count, found = _validate(run)
    score = mean if mean is not None and not math.isnan(mean) else -math.inf
    if run.val is None or score > run.best_score or model.best_epoch is None:
        run.best_score, run.since_best = score, 0
        model.best_epoch = epoch + 1
        run.best_state = {
            k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()
        }
        if found is not None:
            s, t, k = found
            run.thresholds = tuple(
                youden_threshold(t[k[:, i], i], s[k[:, i], i]) for i in range(s.shape[1])
            )
        if run.folder is not None:
            save_state(run.best_state, run.folder / BEST)
    else:
        run.since_best += 1
    result = EpochResult(
        epoch=epoch + 1,
        epochs=run.options["epochs"],
        steps=len(run.epoch_losses),
        loss=float(np.mean(run.epoch_losses)) if run.epoch_losses else math.nan,
        seconds=seconds,
        validation_loss=v_loss,
        validation_auroc=auroc,
        validation_mean_auroc=mean,
        validation_count=count,
    )
    model.losses += run.epoch_losses
    model.epochs.append(result)
    run.epoch_losses = []
    with warnings.catch_warnings():
        # fp16's gradient scaler may skip every step of a short epoch (an inf at
        # its first scale); the schedule is per epoch, so no value of it is lost.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        run.scheduler.step()
    return result


# -- checkpoints ----------------------------------------------------------------
def _save_last(run: _Run) -> None:
    if run.folder is None:
        return
    import torch

    model = run.model
    state = {
        "network": model.network.state_dict(),
        "optimiser": run.optimiser.state_dict(),
        "scaler": run.scaler.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "loader": run.train.state_dict(),
        "epoch": run.train.epoch,
        "step": model.steps,
        "scans": model.scans,
        "losses": list(model.losses),
        "epoch_losses": list(run.epoch_losses),
        "epochs": [dataclasses.asdict(e) for e in model.epochs],
        "best": {
            "epoch": model.best_epoch,
            "score": run.best_score,
            "since": run.since_best,
            "thresholds": list(run.thresholds),
        },
        "config": run.config,
        "rng": torch.get_rng_state(),
    }
    save_state(state, run.folder / LAST)


def _resume(run: _Run) -> None:
    """Put ``run`` where its last checkpoint left it; refuse one of other settings."""
    import torch

    state = load_state(run.folder / LAST)
    theirs = state.get("config", {})
    wrong = [k for k in run.config if theirs.get(k) != run.config[k]]
    if wrong:
        detail = ", ".join(f"{k} {theirs.get(k)!r} (now {run.config[k]!r})" for k in wrong)
        raise ValueError(
            f"checkpoint {run.folder / LAST} is of a run with other settings: {detail}"
        )
    model = run.model
    model.network.load_state_dict(state["network"])
    run.optimiser.load_state_dict(state["optimiser"])
    run.scaler.load_state_dict(state["scaler"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.train.load_state_dict(state["loader"])
    model.steps, model.scans = int(state["step"]), int(state["scans"])
    model.losses, run.epoch_losses = list(state["losses"]), list(state["epoch_losses"])
    model.epochs = [EpochResult(**e) for e in state["epochs"]]
    best = state["best"]
    model.best_epoch, run.best_score = best["epoch"], float(best["score"])
    run.since_best, run.thresholds = int(best["since"]), tuple(best["thresholds"])
    if model.best_epoch is not None:
        run.best_state = load_state(run.folder / BEST)
    torch.set_rng_state(state["rng"])


# -- the run ----------------------------------------------------------------------
def train_cnn(
    store,
    *,
    target: str | None = None,
    targets: list[str] | str | None = None,
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
    uncertain: str = "ignore",
    balance: bool = True,
    patience: int | None = None,
    freeze_epochs: int = 0,
    finetune_lr: float | None = None,
    checkpoints: str | os.PathLike | None = None,
    checkpoint_steps: int | None = None,
    resume: bool = False,
    storage_options: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainedCNN:
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
    run = _start(torch, train, val, contract, arch, device, precision, seed=seed, weights=weights)
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
    _weights(run, balance=balance, lr=lr, finetune_lr=finetune_lr, freeze_epochs=freeze_epochs)
    if resume:
        _resume(run)
    _epochs(run, epochs=epochs, max_steps=max_steps, patience=patience, on_epoch=on_epoch)
    return _finish(run)


def _start(torch, train, val, contract, arch, device, precision, *, seed, weights) -> _Run:
    """The network on its device, its optimiser and mixed precision, in a :class:`_Run`."""
    dev = torch.device(device)
    network = _network_on(dev, arch, contract, seed=seed, weights=weights)
    step = _mixed_precision(torch, dev, precision)  # autocast and scaler
    model = TrainedCNN(network, contract, arch, device, precision)
    optimiser = torch.optim.Adam(network.parameters(), lr=1.0)  # lr set by _weights
    return _Run(
        model=model,
        train=train,
        val=val,
        optimiser=optimiser,
        scheduler=None,
        pos_weight=None,
        device=dev,
        options={},
        config={},
        **step,
    )


def _weights(run: _Run, *, balance: bool, lr: float, finetune_lr: float, freeze_epochs: int):
    """Each finding's positive weight (negatives/positives of the training split,
    1 where it has no positive) and the learning rate schedule."""
    import torch

    pos, neg = run.train.positives, run.train.negatives
    weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0) if balance else np.ones(len(pos))
    run.pos_weight = torch.as_tensor(weight, dtype=torch.float32, device=run.device)
    for group in run.optimiser.param_groups:
        group["lr"] = lr
    run.scheduler = lr_schedule(
        run.optimiser, lr=lr, finetune_lr=finetune_lr, freeze_epochs=freeze_epochs
    )


def _epochs(run: _Run, *, epochs: int, max_steps, patience, on_epoch) -> None:
    """Epochs from the loader's (0, or a checkpoint's) up to ``epochs``, or until
    ``max_steps`` or ``patience`` stop the run."""
    model, train = run.model, run.train
    first = train.epoch if train.consumed < len(train) or not len(train) else train.epoch + 1
    for epoch in range(first, epochs):
        if max_steps is not None and model.steps >= max_steps:
            break
        if patience is not None and run.since_best >= patience:
            break
        if not (train.epoch == epoch and 0 < train.consumed < len(train)):
            train.set_epoch(epoch)  # a new epoch, not one a checkpoint left half done
        t0 = time.perf_counter()
        _fit(run, epoch)
        # Stopped by max_steps inside the epoch: what it did is scored, and the
        # checkpoint keeps the loader where it stopped.
        partial = train.consumed < len(train)
        result = _end_epoch(run, epoch, time.perf_counter() - t0)
        if not partial:
            train.set_epoch(epoch + 1)
        _save_last(run)
        if on_epoch is not None:
            on_epoch(result)
        if partial:
            break


def _finish(run: _Run) -> TrainedCNN:
    """The best epoch's weights, on the CPU in fp32 and eval mode, with the
    validation split's thresholds in a contract of several findings."""
    model = run.model
    if run.best_state is not None:
        model.network.load_state_dict(run.best_state)
    if model.contract.findings and run.thresholds:
        model.contract = dataclasses.replace(model.contract, thresholds=run.thresholds)
    for p in model.network.parameters():
        p.requires_grad_(True)
    model.network.to("cpu").float().eval()
    return model


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


def _network_on(dev, arch: str, contract: ModelContract, *, seed: int, weights):
    """A fresh network (``weights`` loaded when given) moved onto ``dev``."""
    network = build_network(arch, channels=contract.channels, seed=seed, outputs=contract.outputs)
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
