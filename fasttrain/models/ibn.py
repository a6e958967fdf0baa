"""IBN-Net ResNet50-IBN-a (1807.09441), our CIFAR adaptation (3x3 stride-1 stem, no max-pool): a
post-activation ResNet-50 whose bottlenecks in stages 1-3 normalise the first conv's output with IBN:
instance norm (affine) on half the channels, batch norm on the rest. Stage 4 keeps plain batch norm."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, drop_path_rates, make_activation
from .registry import register_model


class IBN(nn.Module):
    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], 1)


class IBNBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, activation: str, drop_path: float, ibn: bool):
        super().__init__()
        c_out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, planes, 1, bias=False), IBN(planes) if ibn else nn.BatchNorm2d(planes),
            make_activation(activation),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), make_activation(activation),
            nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.drop_path = DropPath(drop_path)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.body(x)))


class ResNetIBN(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 10, width: float = 1.0, activation: str = "relu",
                 drop_path: float = 0.0):
        super().__init__()
        c = max(8, round(64 * width))
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), make_activation(activation))
        rates = iter(drop_path_rates(sum(layers), drop_path))
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            planes = max(8, round(64 * width * 2**i))
            blocks = []
            for j in range(n):
                blocks.append(IBNBottleneck(c, planes, 2 if (i > 0 and j == 0) else 1, activation, next(rates),
                                            ibn=i < 3))
                c = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet50_ibn_a", family="ibn")
def resnet50_ibn_a(num_classes: int = 10, width: float = 1.0, activation: str = "relu",
                   drop_path: float = 0.0) -> nn.Module:
    """ResNet50-IBN-a, CIFAR stem (about 23.5M params)."""
    return ResNetIBN([3, 4, 6, 3], num_classes, width, activation, drop_path)
