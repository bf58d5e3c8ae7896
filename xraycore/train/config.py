"""What a CNN training run is, in one frozen, checked object: :class:`TrainConfig`.

``xray train`` builds it from its flags, :func:`xraycore.train.cnn.train_cnn`
takes it, every checkpoint stores it (:meth:`TrainConfig.to_dict`), the model's
lineage is written from it, and ``--resume`` compares the checkpoint's with the
run's (:meth:`TrainConfig.resume_differences`). Its fields come in groups: the
selection (which rows, which labels), the model (architecture, input contract,
starting weights), the schedule, the loader and device (how this process runs)
and the checkpoints. A field marked *kept* must be the same when a killed run is
resumed; the others say how this process runs (where, how fast, until which
step) and may change between the kill and the resume.

Models: MosaicML Streaming's ``StreamingDataset`` keywords and PyTorch
Lightning's ``Trainer`` arguments (one object for a run's options),
pangeo-forge-recipes' transforms as typed dataclasses. Nothing here imports
torch: a configuration is checked before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xraycore._validate import check_int, check_positive
from xraycore.predict.contract import ModelContract
from xraycore.train._network import (
    ARCHITECTURES,
    DEVICES,
    PRECISIONS,
    check_cnn_contract,
    cnn_contract,
)
from xraycore.train._targets import UNCERTAIN

__all__ = ["TrainConfig"]

_KEPT = "kept on resume"


def _kept(default: Any) -> Any:
    """A field a resumed run must share with its checkpoint."""
    return dataclasses.field(default=default, metadata={_KEPT: True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One CNN training run: what it learns from, how, where, and its checkpoints.

    Every check runs when the object is made; a bad value is a ``ValueError``
    (``TypeError`` for a value of the wrong type) naming the field.

    Parameters
    ----------
    target : str, optional
        One finding column (``finding_pneumonia``): a model of one sigmoid whose
        contract keeps ``labels``. Kept.
    targets : sequence of str or "findings", optional
        Several findings (see :class:`~xraycore.train.loader.ScanLoader`): one
        sigmoid each, the contract's ``findings``, per-finding thresholds chosen
        on the validation split (Youden's J). One of ``target`` and ``targets``.
        Kept.
    split : str
        Rows to train on. Default "train". Kept.
    validation : str or None
        Split scored after every epoch when the store has it. Default
        "validation"; None: no validation. Kept.
    where : dict, optional
        Column -> required value (or list of values). Kept.
    uncertain : {"ignore", "zeros", "ones"}
        What an uncertain (-1) label becomes. Default "ignore". Kept.
    arch : str
        One of :data:`~xraycore.train.cnn.ARCHITECTURES`. Kept.
    contract : ModelContract, optional
        Input size and normalisation. Default :func:`~xraycore.train.cnn.cnn_contract`
        (). Kept.
    weights : path, optional
        A local state_dict file to start from
        (:func:`~xraycore.train.cnn.load_checkpoint`).
    epochs, batch_size, lr : int, int, float
        Adam over a masked binary cross-entropy. Defaults 1, 64 and 1e-3 (seed
        003's batch size and base learning rate). Kept.
    seed : int
        Seeds the initial weights and the loader's shuffle. Default 0. Kept.
    freeze_epochs : int
        Seed 003's stage one: epochs in which only the head learns. Default 0. Kept.
    finetune_lr : float, optional
        Learning rate after stage one. Default ``lr / 10`` (the transfer-learning recipe: 1e-4
        after 1e-3), see :attr:`stage_two_lr`. Kept.
    patience : int, optional
        Stop after this many epochs without a better mean validation AUROC. Kept.
    balance : bool
        Weight each finding's positives by the training split's
        negatives/positives (default); False: every label weighs 1. Kept.
    max_steps : int, optional
        Stop after this many optimiser steps in all (0: only load ``weights``).
    workers : int
        DataLoader worker processes reading and preparing batches (0: this one).
    device, precision : str
        See :func:`~xraycore.train.cnn.cnn_device`. Default "auto" for both.
    checkpoints : path, optional
        Folder of the run's checkpoints (``last.pt`` after every epoch and
        every ``checkpoint_steps`` steps, ``best.pt``). None: none written.
    checkpoint_steps : int, optional
        Also write ``last.pt`` every this many steps.
    resume : bool
        Go on from ``checkpoints/last.pt``.
    """

    # -- selection: which rows, which labels
    target: str | None = _kept(None)
    targets: tuple[str, ...] | str | None = _kept(None)
    split: str = _kept("train")
    validation: str | None = _kept("validation")
    where: dict[str, Any] | None = _kept(None)
    uncertain: str = _kept("ignore")
    # -- the model
    arch: str = _kept("densenet121")
    contract: ModelContract | None = _kept(None)  # None: cnn_contract(), set when made
    weights: Path | None = None
    # -- the schedule
    epochs: int = _kept(1)
    batch_size: int = _kept(64)
    lr: float = _kept(1e-3)
    seed: int = _kept(0)
    freeze_epochs: int = _kept(0)
    finetune_lr: float | None = _kept(None)
    patience: int | None = _kept(None)
    balance: bool = _kept(True)
    max_steps: int | None = None
    # -- the loader and the device
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    # -- the checkpoints
    checkpoints: Path | None = None
    checkpoint_steps: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        self._normalise()
        self._check_model()
        self._check_schedule()
        self._check_selection()
        self._check_checkpoints()
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def _normalise(self) -> None:
        """One form for each value, so that two equal runs compare equal."""

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.contract is None:
            put("contract", cnn_contract())
        if self.targets is not None and not isinstance(self.targets, str):
            put("targets", tuple(str(t) for t in self.targets))
        if self.where is not None:
            if not isinstance(self.where, Mapping):
                raise TypeError(f"where must be a dict of column -> value, got {self.where!r}")
            put("where", dict(self.where))
        for name in ("weights", "checkpoints"):
            value = getattr(self, name)
            if value is not None:
                put(name, Path(os.fspath(value)))
        put("balance", bool(self.balance))
        put("resume", bool(self.resume))

    def _check_model(self) -> None:
        check_cnn_contract(self.contract)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")

    def _check_schedule(self) -> None:
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("workers", 0),
            ("seed", 0),
            ("freeze_epochs", 0),
        ):
            check_int(getattr(self, name), name, minimum=minimum)
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps", minimum=0)
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)
        object.__setattr__(self, "lr", check_positive(self.lr, "lr"))
        if self.finetune_lr is not None:
            object.__setattr__(self, "finetune_lr", check_positive(self.finetune_lr, "finetune_lr"))

    def _check_selection(self) -> None:
        if (self.target is None) == (self.targets is None):
            raise ValueError("give target (one finding) or targets (several), not both nor neither")
        if self.uncertain not in UNCERTAIN:
            raise ValueError(f"uncertain must be one of {UNCERTAIN}, got {self.uncertain!r}")

    def _check_checkpoints(self) -> None:
        if self.checkpoint_steps is not None:
            check_int(self.checkpoint_steps, "checkpoint_steps", minimum=1)
            if self.checkpoints is None:
                raise ValueError("checkpoint_steps needs a checkpoints folder")
        if self.resume and self.checkpoints is None:
            raise ValueError("resume needs the checkpoints folder of the run to resume")

    # -- what it means
    @property
    def stage_two_lr(self) -> float:
        """The learning rate after ``freeze_epochs``: ``finetune_lr``, or ``lr / 10``."""
        return self.lr / 10 if self.finetune_lr is None else self.finetune_lr

    @property
    def label_columns(self) -> list[str] | str:
        """What the loaders are given as ``targets``: ``"findings"``, the findings
        named, or the one ``target`` as a list of one."""
        if self.targets is None:
            return [self.target]
        return self.targets if isinstance(self.targets, str) else list(self.targets)

    # -- stored and compared
    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (str, numbers, lists, dicts): what a
        checkpoint stores and :meth:`from_dict` reads back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelContract):
                value = value.to_dict()
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration :meth:`to_dict` wrote."""
        values = dict(values)
        if isinstance(values.get("contract"), Mapping):
            values["contract"] = ModelContract.from_dict(values["contract"])
        return cls(**values)

    def resume_differences(self, checkpoint: TrainConfig) -> list[str]:
        """The kept fields in which ``checkpoint`` (a killed run's) differs from
        this run, each as ``"name <checkpoint's> (now <this run's>)"``; empty
        when this run may go on from it. ``finetune_lr`` is compared as
        :attr:`stage_two_lr`, the rate it means."""
        mine, theirs = self._kept_values(), checkpoint._kept_values()
        return [f"{k} {theirs[k]!r} (now {mine[k]!r})" for k in mine if theirs[k] != mine[k]]

    def _kept_values(self) -> dict[str, Any]:
        values = self.to_dict()
        values["finetune_lr"] = self.stage_two_lr
        return {f.name: values[f.name] for f in dataclasses.fields(self) if f.metadata.get(_KEPT)}
