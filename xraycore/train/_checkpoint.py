"""A training run's checkpoints: everything a killed run needs to go on as if it
had not stopped, written atomically in a ``checkpoints/`` folder next to the model.

``last.pt`` holds the network, the optimiser, the gradient scaler, the learning
rate scheduler, the loader's position (epoch and batch), the step, the losses
and epochs so far and the best epoch's record; ``best.pt`` the best epoch's
weights. Both are plain ``torch.save`` dicts of tensors and numbers, loaded with
``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xraycore.store.durable import atomic_path
from xraycore.train._network import import_torch

__all__ = ["BEST", "CHECKPOINTS", "LAST", "checkpoint_dir", "load_state", "save_state"]

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """The checkpoints folder of a model written to ``out``: ``checkpoints/`` beside it."""
    return Path(out).parent / CHECKPOINTS


def save_state(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    torch = import_torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_state`."""
    torch = import_torch()
    if not path.is_file():
        raise ValueError(f"no checkpoint to resume from: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from exc
