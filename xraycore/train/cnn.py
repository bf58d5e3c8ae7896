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
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraycore._validate import check_int, check_positive
from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.store.schema import temporary_path

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

ARCHITECTURES = ("densenet121",)
# ImageNet's statistics: what an ImageNet-trained DenseNet-121 (seed 004's
# starting point, given as ``weights``) was trained to see.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseNet-121 halves its input five times: below 32 px nothing is left to pool.
MIN_SIZE = 32
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
INSTALL_HINT = "pip install 'xray-pipeline[torch]'"


def _torch():
    """torch, after checking that everything training and export need imports."""
    for name in ("torch", "monai.networks.nets", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(
                f"a CNN needs PyTorch, MONAI and onnxscript ({exc}): {INSTALL_HINT}"
            ) from exc
    import torch

    return torch


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


def cnn_device(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """Where and in what precision training runs.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        "auto" is CUDA when torch sees a GPU, else the CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast dtype of the forward pass. "auto" is bf16 on a GPU that has it,
        fp16 (with a gradient scaler) on one that does not, fp32 on the CPU.

    Returns
    -------
    device, precision : str, str
        Both resolved ("cpu" or "cuda"; "fp32", "bf16" or "fp16").
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    torch = _torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device 'cuda' asked for, but torch {torch.__version__} sees no GPU "
            "(a CPU build of torch, or no CUDA device)"
        )
    if precision == "auto":
        if device == "cpu":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return device, precision


def build_network(arch: str = "densenet121", *, channels: int = 3, seed: int | None = 0):
    """A freshly initialised network with one output (a logit).

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    channels : int
        Input channels (the contract's).
    seed : int or None
        Seeds torch's generator before the weights are drawn.

    Returns
    -------
    network : torch.nn.Module
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    torch = _torch()
    from monai.networks.nets import DenseNet121

    if seed is not None:
        torch.manual_seed(seed)
    return DenseNet121(spatial_dims=2, in_channels=channels, out_channels=1)


def load_checkpoint(network, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``network`` (local files only, never a download).

    A dict holding the state_dict under ``"state_dict"`` is accepted too. Every
    tensor must fit: a missing, extra or differently shaped one is an error.
    """
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"weights file {path} is not a torch state_dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"weights file {path} is not a torch state_dict (name -> tensor)")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        problems = [
            f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            for what, names in (
                ("missing", missing),
                ("unexpected", extra),
                ("of another shape", shapes),
            )
            if names
        ]
        raise ValueError(
            f"weights file {path} does not fit the network: tensors {'; '.join(problems)}"
        )
    network.load_state_dict(state)


def save_checkpoint(network, path: str | os.PathLike) -> Path:
    """Write ``network``'s state_dict (what :func:`load_checkpoint` reads), atomically."""
    torch = _torch()
    path = Path(path)
    tmp = Path(temporary_path(str(path)))
    try:
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class EpochResult:
    """One epoch: mean training loss, and the validation split's loss and accuracy."""

    epoch: int
    epochs: int
    steps: int
    loss: float
    seconds: float
    validation_loss: float | None = None
    validation_accuracy: float | None = None
    validation_count: int = 0


@dataclass
class TrainedCNN:
    """A trained network (fp32, on the CPU, in eval mode) and how it was made."""

    network: Any
    contract: ModelContract
    arch: str
    device: str
    precision: str
    steps: int = 0
    scans: int = 0
    losses: list[float] = field(default_factory=list)
    epochs: list[EpochResult] = field(default_factory=list)


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

    def loader(name: str, shuffle: bool):
        return ScanLoader(
            store,
            batch_size=batch_size,
            split=name,
            target=target,
            where=where,
            shuffle=shuffle,
            seed=seed,
            storage_options=storage_options,
        )

    train = loader(split, True)
    if not len(train):
        raise ValueError(f"split {split!r} has no rows labelled in {target!r}: nothing to train on")
    if validation is None or validation == split:
        return train, None
    try:
        val = loader(validation, False)
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
    torch = _torch()
    device, precision = cnn_device(device, precision)

    train, val = _loaders(
        store,
        split=split,
        validation=validation,
        target=target,
        where=where,
        batch_size=batch_size,
        seed=seed,
        storage_options=storage_options,
    )
    network = build_network(arch, channels=contract.channels, seed=seed)
    if weights is not None:
        load_checkpoint(network, weights)
    dev = torch.device(device)
    network.to(dev)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = functools.partial(
        torch.autocast, device_type=dev.type, dtype=dtype, enabled=dtype is not None
    )
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    model = TrainedCNN(network, contract, arch, device, precision)
    for epoch in range(epochs):
        limit = None if max_steps is None else max_steps - model.steps
        if limit == 0:
            break
        t0 = time.perf_counter()
        train.set_epoch(epoch)
        batches = _batches(train, contract, workers=workers, device=dev)
        losses, scans = _fit(network, batches, optimiser, scaler, autocast=autocast, limit=limit)
        model.steps += len(losses)
        model.scans += scans
        model.losses += losses
        v_loss, v_acc, v_n = None, None, 0
        if val is not None:
            v_loss, v_acc, v_n = _evaluate(
                network, val, contract, workers=workers, device=dev, autocast=autocast
            )
        result = EpochResult(
            epoch=epoch + 1,
            epochs=epochs,
            steps=len(losses),
            loss=float(np.mean(losses)),
            seconds=time.perf_counter() - t0,
            validation_loss=v_loss,
            validation_accuracy=v_acc,
            validation_count=v_n,
        )
        model.epochs.append(result)
        if on_epoch is not None:
            on_epoch(result)
    network.to("cpu").float().eval()
    return model


def cnn_scores(network, scans: np.ndarray, contract: ModelContract, *, batch_size: int = 16):
    """Probability of the positive label for (N, S, S) uint8 scans, by torch in
    eval mode in fp32 on the network's device: what the exported ONNX model gives."""
    torch = _torch()
    network.eval()
    dev = next(network.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(scans), batch_size):
            x = torch.from_numpy(prepare_batch(scans[start : start + batch_size], contract))
            out.append(torch.sigmoid(network(x.to(dev)).float()).squeeze(1).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notes that are not about this model: torchvision's
    operators it skips registering, and a deprecation inside torch itself."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
            )
            yield
    finally:
        registration.setLevel(level)


def export_cnn_onnx(model: TrainedCNN, path: str | os.PathLike) -> Path:
    """Write the network, sigmoid included, as ONNX with its contract as the
    sidecar ``<path>.json``; input (N, C, S, S) float32 named "input", output
    (N, 1) "score".

    Notes
    -----
    torch's ``torch.export``-based exporter (its default since 2.9; the
    TorchScript one is deprecated), opset 18 and IR version 8 as the NumPy
    baseline, one file with its weights inside (``xray classify`` hands
    onnxruntime the model's bytes, so external weight files would be lost).
    """
    import json

    torch = _torch()
    path = Path(path)
    c = model.contract
    wrapped = torch.nn.Sequential(model.network, torch.nn.Sigmoid()).cpu().float().eval()
    example = torch.zeros(2, c.channels, c.size, c.size)  # 2, not 1: a batch of 1 is specialised
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=["score"],
            dynamic_shapes=({0: torch.export.Dim("N")},),
            verbose=False,
        )
    # The exporter stamps IR version 10; the graph uses nothing newer than IR 8
    # (plain opset-18 operators, no functions), which onnxruntime 1.17 still loads.
    program.model.ir_version = 8
    tmp = Path(temporary_path(str(path)))
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = Path(f"{path}.json")
    tmp = Path(temporary_path(str(sidecar)))
    tmp.write_text(json.dumps(c.to_dict(), indent=2))
    os.replace(tmp, sidecar)
    return path
