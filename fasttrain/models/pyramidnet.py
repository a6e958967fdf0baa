"""PyramidNet for CIFAR (Han et al., 1610.02915), additive widening, basic units: the width grows by
alpha/N at every unit (N units in all) from 16, units are BN-conv-BN-act-conv-BN (no act before the
add), shortcuts are parameter-free (2x2 average pool at stride 2, zero-padded channels)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, PadShortcut, drop_path_rates, make_activation
from .registry import register_model


class PyramidUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, drop_path: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out), make_activation(activation), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = PadShortcut(c_in, c_out, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.body(x))


class PyramidNet(nn.Module):
    def __init__(self, depth: int = 110, alpha: float = 48, num_classes: int = 10, activation: str = "relu",
                 drop_path: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"PyramidNet (basic) depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        total = 3 * n
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        rates = drop_path_rates(total, drop_path)
        units: list[nn.Module] = []
        c, exact = 16, 16.0
        for i in range(total):
            exact += alpha / total
            c_out = round(exact)
            stride = 2 if i in (n, 2 * n) else 1
            units.append(PyramidUnit(c, c_out, stride, activation, rates[i]))
            c = c_out
        self.units = nn.Sequential(*units)
        self.final = nn.Sequential(nn.BatchNorm2d(c), make_activation(activation))
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.units(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("pyramidnet110_a48", family="pyramidnet")
def pyramidnet110_a48(num_classes: int = 10, activation: str = "relu", drop_path: float = 0.0,
                      alpha: float = 48) -> nn.Module:
    """PyramidNet-110, alpha 48 (the paper's 1.7M-parameter CIFAR net)."""
    return PyramidNet(110, alpha, num_classes, activation, drop_path)
