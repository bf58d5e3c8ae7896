"""Seed 003's two-stage transfer-learning schedule, and the loss of several findings.

Seed 003 trains the new head with the ImageNet backbone frozen (Keras
``trainable = False``: its weights and its batch-norm statistics stay) for 50
epochs at a learning rate of 1e-3, then fine-tunes every layer for 30 more at
1e-4. Here the head is MONAI DenseNet-121's ``class_layers`` and the backbone its
``features``; stage one puts the backbone's batch norms in eval mode, as Keras
does for a frozen model.
"""

from __future__ import annotations

__all__ = ["backbone", "lr_schedule", "masked_bce", "set_stage"]


def backbone(network):
    """The layers a frozen stage keeps as they are (DenseNet-121's ``features``)."""
    return network.features


def set_stage(network, *, frozen: bool) -> None:
    """Train mode for a step: every layer, or (``frozen``) only the head, the
    backbone's weights without gradients and its batch norms on their running
    statistics."""
    network.train()
    for p in backbone(network).parameters():
        p.requires_grad_(not frozen)
    if frozen:
        backbone(network).eval()


def lr_schedule(optimiser, *, lr: float, finetune_lr: float, freeze_epochs: int):
    """A per-epoch scheduler: ``lr`` while the backbone is frozen (the first
    ``freeze_epochs`` epochs), ``finetune_lr`` after; ``lr`` throughout when
    nothing is frozen."""
    import torch

    def factor(epoch: int) -> float:
        return 1.0 if freeze_epochs == 0 or epoch < freeze_epochs else finetune_lr / lr

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def masked_bce(logits, target, mask, pos_weight):
    """Binary cross-entropy of (B, K) logits, each finding's positives weighted by
    ``pos_weight`` (K,), averaged over the labels ``mask`` counts."""
    import torch.nn.functional as F

    each = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )
    m = mask.to(each.dtype)
    return (each * m).sum() / m.sum().clamp(min=1.0)
