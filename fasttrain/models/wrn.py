"""Wide residual networks for CIFAR (Zagoruyko & Komodakis, 1605.07146): WRN-d-k has 3 groups of (d-4)/6
pre-activation basic blocks of widths 16k, 32k, 64k, 1x1-conv shortcuts where the shape changes, an
optional dropout between the two convs, and a final BN-act, average pool, linear."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, drop_path_rates, make_activation
from .registry import register_model


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, dropout: float, drop_path: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if (stride != 1 or c_in != c_out) else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(pre)))))
        return skip + self.drop_path(out)


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: float, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [round(16 * k), round(32 * k), round(64 * k)]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        rates = iter(drop_path_rates(3 * n, drop_path))
        blocks: list[nn.Module] = []
        c = 16
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(WideBlock(c, w, 2 if (i > 0 and j == 0) else 1, activation, dropout, next(rates)))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(c), make_activation(activation))
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("wrn28_10", family="wrn")
def wrn28_10(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
             dropout: float = 0.0) -> nn.Module:
    """WRN-28-10 (36.5M params); `width` scales k."""
    return WideResNet(28, 10 * width, num_classes, activation, dropout, drop_path)


@register_model("wrn16_8", family="wrn")
def wrn16_8(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
            dropout: float = 0.0) -> nn.Module:
    """WRN-16-8 (11.0M params); `width` scales k."""
    return WideResNet(16, 8 * width, num_classes, activation, dropout, drop_path)
