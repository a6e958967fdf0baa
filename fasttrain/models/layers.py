"""Small building blocks shared by the model families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("relu", "mish", "swish", "gelu")


def make_activation(name: str = "relu") -> nn.Module:
    """relu | mish (x tanh(softplus x)) | swish (x sigmoid x, a.k.a. SiLU) | gelu."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Mul(nn.Module):
    """Multiplies by a constant (e.g. the logit scale of ResNet9 / airbench)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability p in training, scaling the
    survivors by 1/(1-p) so the expected output is unchanged; identity at eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def global_pool(x: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1).flatten(1) if mode == "avg" else F.adaptive_max_pool2d(x, 1).flatten(1)
