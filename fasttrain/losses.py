"""Training losses shared by the trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixed_cross_entropy(logits: torch.Tensor, targets, label_smoothing: float) -> torch.Tensor:
    """lam * CE(y_a) + (1 - lam) * CE(y_b), averaged over the batch."""
    logits = logits.float()
    loss_a = F.cross_entropy(logits, targets.y_a, reduction="none", label_smoothing=label_smoothing)
    if targets.y_b is targets.y_a:
        return loss_a.mean()
    loss_b = F.cross_entropy(logits, targets.y_b, reduction="none", label_smoothing=label_smoothing)
    return (targets.lam * loss_a + (1 - targets.lam) * loss_b).mean()
