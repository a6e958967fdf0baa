"""Exponential moving average of a model's weights (evaluation uses the average when it is on).

ema = decay * ema + (1 - decay) * weights for every floating-point parameter and buffer (BatchNorm running
statistics included, as timm's ModelEmaV2); integer buffers (num_batches_tracked) are copied. With warmup
the decay ramps as min(decay, (1 + n) / (10 + n)) over the n-th update, so early weights do not dominate.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True, foreach: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema-decay: must lie in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.foreach = foreach  # False: the per-tensor reference loop (same result)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        ema_float, new_float = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                ema_float.append(e)
                new_float.append(m.detach())
            else:
                e.copy_(m)
        if self.foreach and ema_float:
            torch._foreach_lerp_(ema_float, new_float, 1.0 - d)
        else:
            for e, m in zip(ema_float, new_float):
                e.mul_(d).add_(m, alpha=1.0 - d)
