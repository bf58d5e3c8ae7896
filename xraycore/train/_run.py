"""One CNN training run: its state between steps (:class:`Run`), the batches it
steps on, its epochs, their scores on the validation split, and its checkpoints.

:func:`xraycore.train.cnn.train_cnn` opens the loaders and then calls, in
order, :func:`start_run`, :func:`resume_run` (when asked), :func:`run_epochs`
and :func:`finish_training`; each reads the run's settings from its
:class:`~xraycore.train.config.TrainConfig` (``run.config``). ``torch`` is
imported by the functions that use it, never when this module is imported.

A checkpoint (``last.pt``) stores the configuration (:meth:`TrainConfig.to_dict`)
and the training's lineage beside the run's state, under
:data:`CHECKPOINT_FORMAT`; :func:`resume_run` goes on only from a checkpoint of
that format whose kept settings and lineage are this run's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.predict.roc import roc_auc, youden_threshold
from xraycore.train._checkpoint import BEST, LAST, load_state, save_state
from xraycore.train._network import EpochResult, TrainedCNN, build_network, load_checkpoint
from xraycore.train._schedule import lr_schedule, masked_bce, set_stage
from xraycore.train.config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "Run",
    "finish_training",
    "prepare_tensors",
    "resume_run",
    "run_batches",
    "run_epochs",
    "start_run",
]

#: What ``last.pt`` holds: 2 since the run's settings are a TrainConfig
#: (``config``) beside its lineage (``lineage``). Format 1 (no such key) kept a
#: dict of some settings, with no record of ``workers`` or ``max_steps``.
CHECKPOINT_FORMAT = 2


def prepare_tensors(batch: dict, *, contract: ModelContract):
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


def run_batches(loader, contract: ModelContract, *, workers: int, device):
    """(inputs, targets, mask) on ``device`` for one pass over ``loader`` from
    where it stands."""
    from torch.utils.data import DataLoader

    from xraycore.train._torch import worker_context

    options = dict(
        collate_fn=functools.partial(prepare_tensors, contract=contract),
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


@dataclasses.dataclass
class Run:
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
    config: TrainConfig
    epoch_losses: list[float] = dataclasses.field(default_factory=list)
    best_score: float = -math.inf
    best_state: dict | None = None
    thresholds: tuple[float, ...] = ()
    since_best: int = 0

    @property
    def folder(self) -> Path | None:
        return self.config.checkpoints


# -- the start ----------------------------------------------------------------------
def start_run(
    torch, train, val, contract: ModelContract, config: TrainConfig, *, device: str, precision: str
) -> Run:
    """The network on its device, its optimiser, mixed precision, each finding's
    positive weight and the learning rate schedule, in a :class:`Run`."""
    dev = torch.device(device)
    network = _network_on(dev, config.arch, contract, seed=config.seed, weights=config.weights)
    autocast, scaler = _mixed_precision(torch, dev, precision)
    model = TrainedCNN(
        network,
        contract,
        config.arch,
        device,
        precision,
        config=config,
        target_names=tuple(train.target_names),
    )
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    return Run(
        model=model,
        train=train,
        val=val,
        optimiser=optimiser,
        scaler=scaler,
        scheduler=lr_schedule(
            optimiser,
            lr=config.lr,
            finetune_lr=config.stage_two_lr,
            freeze_epochs=config.freeze_epochs,
        ),
        autocast=autocast,
        pos_weight=_positive_weight(torch, train, dev, balance=config.balance),
        device=dev,
        config=config,
    )


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
    return autocast, scaler


def _positive_weight(torch, train, dev, *, balance: bool):
    """Each finding's positive weight: negatives/positives of the training split
    (1 where it has no positive), or 1 for all without ``balance``."""
    pos, neg = train.positives, train.negatives
    weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0) if balance else np.ones(len(pos))
    return torch.as_tensor(weight, dtype=torch.float32, device=dev)


# -- the epochs ---------------------------------------------------------------------
def run_epochs(run: Run, *, on_epoch) -> None:
    """Epochs from the loader's (0, or a checkpoint's) up to the configuration's
    ``epochs``, or until its ``max_steps`` or ``patience`` stop the run."""
    model, train = run.model, run.train
    epochs, max_steps, patience = run.config.epochs, run.config.max_steps, run.config.patience
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


def _fit(run: Run, epoch: int) -> None:
    """Steps of epoch ``epoch`` from where the loader stands, up to its end or
    ``max_steps``; each step's loss kept, a checkpoint every ``checkpoint_steps``."""
    model, config = run.model, run.config
    set_stage(model.network, frozen=epoch < config.freeze_epochs)
    every = config.checkpoint_steps
    for x, y, m in run_batches(
        run.train, model.contract, workers=config.workers, device=run.device
    ):
        if config.max_steps is not None and model.steps >= config.max_steps:
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


def _validate(run: Run):
    """The validation split's loss (unweighted), per-finding AUROC and their mean,
    the scans scored, and each finding's scores and labels."""
    import torch

    model, network = run.model, run.model.network
    network.eval()
    run.val.set_epoch(0)
    scores, targets, masks, loss, counted = [], [], [], 0.0, 0
    with torch.no_grad():
        batches = run_batches(
            run.val, model.contract, workers=run.config.workers, device=run.device
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


def _end_epoch(run: Run, epoch: int, seconds: float) -> EpochResult:
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
        epochs=run.config.epochs,
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


def finish_training(run: Run) -> TrainedCNN:
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


# -- checkpoints --------------------------------------------------------------------
def _save_last(run: Run) -> None:
    if run.folder is None:
        return
    import torch

    model = run.model
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": run.config.to_dict(),
        "lineage": model.contract.training,
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
        "rng": torch.get_rng_state(),
    }
    save_state(state, run.folder / LAST)


def _check_resumable(run: Run, state: dict[str, Any]) -> None:
    """Refuse, in one line saying why, a checkpoint this run cannot go on from:
    another format, or other kept settings (:meth:`TrainConfig.resume_differences`)
    or other training rows (the lineage: store, version, selection, rows)."""
    path = run.folder / LAST
    found = state.get("format", 1)
    if found != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} is of format {found!r}, written by an earlier xray train; "
            f"this one resumes format {CHECKPOINT_FORMAT} only: train again without --resume"
        )
    try:
        theirs = TrainConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {path} holds no readable training configuration: {exc}"
        ) from exc
    wrong = run.config.resume_differences(theirs)
    lineage, recorded = run.model.contract.training or {}, state.get("lineage") or {}
    wrong += [
        f"{k} {recorded.get(k)!r} (now {lineage.get(k)!r})"
        for k in sorted(set(lineage) | set(recorded))
        if recorded.get(k) != lineage.get(k)
    ]
    if wrong:
        raise ValueError(f"checkpoint {path} is of a run with other settings: {', '.join(wrong)}")


def resume_run(run: Run) -> None:
    """Put ``run`` where its last checkpoint left it; refuse one of other settings."""
    import torch

    state = load_state(run.folder / LAST)
    _check_resumable(run, state)
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
    model.resumed_step = model.steps
