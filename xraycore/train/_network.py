"""The CNN itself: where it runs, the network, its checkpoints, and the trained
model's record (:class:`TrainedCNN`).

``torch`` and ``monai`` (the ``torch`` extra) are imported by the functions that
use them (:func:`import_torch`), never when this module is imported.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xraycore.predict.contract import ModelContract
from xraycore.store.durable import atomic_path

__all__ = [
    "ARCHITECTURES",
    "DEVICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INSTALL_HINT",
    "MIN_SIZE",
    "PRECISIONS",
    "EpochResult",
    "TrainedCNN",
    "build_network",
    "check_cnn_contract",
    "cnn_contract",
    "cnn_device",
    "import_torch",
    "load_checkpoint",
    "save_checkpoint",
]

ARCHITECTURES = ("densenet121",)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
INSTALL_HINT = "pip install 'xray-pipeline[torch]'"
# ImageNet's statistics: what an ImageNet-trained DenseNet-121 (the DenseNet-121 report's
# starting point, given as ``weights``) was trained to see.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseNet-121 halves its input five times: below 32 px nothing is left to pool.
MIN_SIZE = 32


def check_cnn_contract(contract: ModelContract) -> ModelContract:
    """``contract`` after checking a CNN trained here can take it."""
    if not isinstance(contract, ModelContract):
        raise TypeError(f"contract must be a ModelContract, got {contract!r}")
    if contract.layout != "NCHW" or contract.output != "sigmoid":
        raise ValueError(
            "a CNN takes NCHW input and gives sigmoid outputs, got contract layout "
            f"{contract.layout!r} and output {contract.output!r}"
        )
    if contract.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} for a DenseNet, got {contract.size!r}")
    return contract


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
    return check_cnn_contract(contract)


def import_torch():
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
    torch = import_torch()
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


def build_network(
    arch: str = "densenet121", *, channels: int = 3, seed: int | None = 0, outputs: int = 1
):
    """A freshly initialised network with ``outputs`` logits (one per finding).

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    channels : int
        Input channels (the contract's).
    seed : int or None
        Seeds torch's generator before the weights are drawn.
    outputs : int
        Logits per image. Default 1.

    Returns
    -------
    network : torch.nn.Module
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    torch = import_torch()
    from monai.networks.nets import DenseNet121

    if seed is not None:
        torch.manual_seed(seed)
    return DenseNet121(spatial_dims=2, in_channels=channels, out_channels=outputs)


def load_checkpoint(network, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``network`` (local files only, never a download).

    A dict holding the state_dict under ``"state_dict"`` is accepted too. Every
    tensor must fit: a missing, extra or differently shaped one is an error.
    """
    torch = import_torch()
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
    torch = import_torch()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)
    return path


@dataclass(frozen=True)
class EpochResult:
    """One epoch: mean training loss, and on the validation split the loss and
    each finding's AUROC (NaN for a finding with one class there) and their mean."""

    epoch: int
    epochs: int
    steps: int
    loss: float
    seconds: float
    validation_loss: float | None = None
    validation_auroc: dict[str, float] = field(default_factory=dict)
    validation_mean_auroc: float | None = None
    validation_count: int = 0


@dataclass
class TrainedCNN:
    """A trained network (fp32, on the CPU, in eval mode) and how it was made.

    ``best_epoch`` is the epoch whose weights ``network`` holds (the best mean
    validation AUROC, or the last epoch without validation); ``config`` the
    run's :class:`~xraycore.train.config.TrainConfig`; ``target_names`` the
    label columns it learnt, one per output; ``resumed_step`` the
    step a resumed run went on from (its checkpoint's), None for a run that
    started afresh.
    """

    network: Any
    contract: ModelContract
    arch: str
    device: str
    precision: str
    steps: int = 0
    scans: int = 0
    losses: list[float] = field(default_factory=list)
    epochs: list[EpochResult] = field(default_factory=list)
    best_epoch: int | None = None
    config: Any = None  # a TrainConfig (not imported: config imports this module)
    target_names: tuple[str, ...] = ()
    resumed_step: int | None = None

    @property
    def selection(self) -> dict[str, Any]:
        """What was trained on: split, validation split, where, uncertain policy
        and the target columns."""
        if self.config is None:
            return {}
        c = self.config
        return {
            "split": c.split,
            "validation": c.validation,
            "where": c.where,
            "uncertain": c.uncertain,
            "targets": list(self.target_names),
        }
