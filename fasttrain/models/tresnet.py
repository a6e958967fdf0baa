"""TResNet-M (2003.13630), our CIFAR adaptation: the space-to-depth stem (which would turn 32 px into
8 px) becomes a stride-1 3x3 conv; the rest follows the paper: basic blocks in stages 1-2 and
bottlenecks in 3-4 ([3,4,11,3], widths 64..512), anti-aliased downsampling (stride-1 conv then a fixed
blur at stride 2), squeeze-excitation in stages 1-3, average-pool + 1x1 conv shortcuts. The paper's
Inplace-ABN with leaky ReLU is BatchNorm + the chosen activation here (relu by default)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import BlurPool, DropPath, SqueezeExcite, drop_path_rates, make_activation
from .registry import register_model


def conv_bn(c_in: int, c_out: int, k: int, activation: str | None, stride: int = 1) -> nn.Sequential:
    """Conv-BN(-act); at stride 2 the conv runs at stride 1 and a blur pool downsamples (anti-aliasing)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False)]
    if stride == 2:
        layers.append(BlurPool(c_out))
    layers.append(nn.BatchNorm2d(c_out))
    if activation:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


class TBasic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, activation: str, drop_path: float, se: bool):
        super().__init__()
        layers = [conv_bn(c_in, planes, 3, activation, stride), conv_bn(planes, planes, 3, None)]
        if se:
            layers.append(SqueezeExcite(planes, activation=activation, hidden=max(planes // 4, 64)))
        self.body = nn.Sequential(*layers)
        self.shortcut = shortcut(c_in, planes, stride)
        self.drop_path = DropPath(drop_path)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.body(x)))


class TBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, activation: str, drop_path: float, se: bool):
        super().__init__()
        c_out = planes * 4
        layers = [conv_bn(c_in, planes, 1, activation), conv_bn(planes, planes, 3, activation, stride)]
        if se:
            layers.append(SqueezeExcite(planes, activation=activation, hidden=max(planes * 4 // 8, 64)))
        layers.append(conv_bn(planes, c_out, 1, None))
        self.body = nn.Sequential(*layers)
        self.shortcut = shortcut(c_in, c_out, stride)
        self.drop_path = DropPath(drop_path)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.body(x)))


class TResNet(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 10, width: float = 1.0, activation: str = "relu",
                 drop_path: float = 0.0):
        super().__init__()
        c = max(8, round(64 * width))
        self.stem = conv_bn(3, c, 3, activation)
        rates = iter(drop_path_rates(sum(layers), drop_path))
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            block = TBasic if i < 2 else TBottleneck
            planes = max(8, round(64 * width * 2**i))
            blocks = []
            for j in range(n):
                blocks.append(block(c, planes, 2 if (i > 0 and j == 0) else 1, activation, next(rates), se=i < 3))
                c = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("tresnet_m", family="tresnet")
def tresnet_m(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0) -> nn.Module:
    """TResNet-M, CIFAR stem."""
    return TResNet([3, 4, 11, 3], num_classes, width, activation, drop_path)
