"""Optimiser construction, the per-step learning-rate schedule, and weight averaging."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import RunConfig


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    """Weights decay; BatchNorm parameters and biases (1-d tensors) get bias_lr_scale and, unless
    norm_bias_decay, no decay. Their decay is divided by bias_lr_scale so the per-step shrink matches."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad and p.dim() > 1:
            continue  # frozen weights (e.g. airbench's whitening conv) never enter the optimiser
        (no_decay if p.dim() <= 1 else decay).append(p)
    bias_wd = cfg.weight_decay / cfg.bias_lr_scale if cfg.norm_bias_decay else 0.0
    return [
        dict(params=decay, lr=cfg.lr, weight_decay=cfg.weight_decay, base_lr=cfg.lr),
        dict(params=no_decay, lr=cfg.lr * cfg.bias_lr_scale, weight_decay=bias_wd, base_lr=cfg.lr * cfg.bias_lr_scale),
    ]


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_multiplier(step: int, total: int, cfg: RunConfig) -> float:
    """Piecewise-linear: start_lr_frac -> 1 over warmup_frac of the steps, then -> end_lr_frac.
    'onecycle' is the same shape with start = end = 0 unless set."""
    warm = max(1, int(total * cfg.warmup_frac))
    if step < warm:
        t = step / warm
        return cfg.start_lr_frac * (1 - t) + t
    t = min(1.0, (step - warm) / max(1, total - warm))
    return 1.0 * (1 - t) + cfg.end_lr_frac * t


class Lookahead:
    """airbench's lookahead: every 5 steps, slow = lerp(slow, fast, 1 - decay) and fast = slow, with
    decay = 0.95^5 * (step / total)^3 (so early on the weights are barely averaged)."""

    def __init__(self, model: nn.Module, total_steps: int):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.total = total_steps

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, final: bool = False) -> None:
        if not final and step % 5:
            return
        decay = 1.0 if final else 0.95**5 * (step / self.total) ** 3
        for (k, slow), fast in zip(self.slow.items(), model.state_dict().values()):
            if fast.dtype.is_floating_point:
                slow.lerp_(fast, 1 - decay)
                fast.copy_(slow)
