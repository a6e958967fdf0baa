"""Training tasks: a task owns a model and its loss, so one step (`fasttrain.steps.TrainStep`) trains any of them.

A task has
    model          the weights being trained (the EMA, lookahead and checkpoints read and write these)
    loss(inputs, targets, **kw) -> (loss, logits or None, targets)
                   called under autocast; logits feed the running accuracy (None: the task has no classes)

`ClassificationTask` is cross-entropy over (possibly mixed) targets, with PatchUp's feature-level mixing when
asked; retrieval's embedding task lives beside its loss (`fasttrain.retrieval.loss.MetricLearningTask`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .losses import mixed_cross_entropy


class ClassificationTask:
    """`forward` is what runs the batch (the compiled or DDP-wrapped model); `model` holds its weights."""

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], *,
                 label_smoothing: float = 0.0, patchup: Any = None):
        self.model = model
        self.forward = forward
        self.label_smoothing = label_smoothing
        self.patchup = patchup

    def loss(self, inputs: torch.Tensor, targets: Any, *, mix_features: bool = False):
        """`mix_features`: PatchUp may mix this batch (mixing is on and the input was not mixed already)."""
        if self.patchup is not None and mix_features:
            self.patchup.arm(len(inputs))
        logits = self.forward(inputs)
        if self.patchup is not None:
            targets = self.patchup.targets(targets)
        return mixed_cross_entropy(logits, targets, self.label_smoothing), logits, targets
