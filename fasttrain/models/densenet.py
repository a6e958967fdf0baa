"""DenseNet-BC for CIFAR (1608.06993): 3 dense blocks of (depth-4)/6 bottleneck layers each
(BN-act-1x1 conv to 4k, BN-act-3x3 conv to k), transitions halving channels and resolution, an initial
3x3 conv to 2k channels, then BN-act, global average pool, linear. Not residual: no drop_path."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import make_activation
from .registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), make_activation(activation), nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), make_activation(activation),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def transition(c_in: int, c_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c_in), make_activation(activation), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNetBC(nn.Module):
    def __init__(self, depth: int, growth: int, num_classes: int = 10, activation: str = "relu",
                 compression: float = 0.5):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for b in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, activation))
                c += growth
            if b < 2:
                c_out = int(c * compression)
                layers.append(transition(c, c_out, activation))
                c = c_out
        layers += [nn.BatchNorm2d(c), make_activation(activation)]
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _register(name: str, depth: int, growth: int, note: str) -> None:
    def factory(num_classes: int = 10, activation: str = "relu") -> nn.Module:
        return DenseNetBC(depth, growth, num_classes, activation)

    factory.__name__ = name
    factory.__doc__ = f"DenseNet-BC, depth {depth}, growth rate {growth}{note}."
    register_model(name, family="densenet")(factory)


_register("densenet100_k12", 100, 12, " (0.8M params)")
_register("densenet100_k16", 100, 16, "")
_register("densenet160_k12", 160, 12, "")
_register("densenet250_k12", 250, 12, "")
_register("densenet250_k24", 250, 24, " (the paper's 15.3M)")
_register("densenet190_k40", 190, 40, " (the paper's 25.6M)")
