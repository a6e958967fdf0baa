"""MobileNetV2 (1801.04381) with inverted residual blocks.

CIFAR mode (default): the kuangliu/pytorch-cifar adaptation: stride-1 stem and stride 1 in the 24-wide
stage, so 32 px inputs end at 4x4. `image_size=96` is the "MobileNetV2 96px" mode of the CIFAR model-zoo reference table: the model
upscales its input bilinearly to 96 px and, for any image_size above 64, uses the ImageNet strides
(stem /2, 24-wide stage /2), ending at 3x3 for 96. `width` is the usual width multiplier.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, InputResize, SqueezeExcite, drop_path_rates, make_activation
from .registry import register_model

# (expansion t, channels c, repeats n, stride s) of the paper's table 2.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _divisible(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int, activation: str | None, groups: int = 1):
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if activation:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise [-> squeeze-excite] -> 1x1 project, residual when shapes allow.
    MobileNetV2's block (k=3, no SE); EfficientNet's MBConv passes a kernel and `se_hidden`."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, activation: str, drop_path: float,
                 kernel: int = 3, se_hidden: int | None = None):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn_act(c_in, hidden, 1, 1, activation)] if expand != 1 else []
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, activation, groups=hidden))
        if se_hidden is not None:
            layers.append(SqueezeExcite(hidden, activation=activation, hidden=se_hidden))
        layers.append(conv_bn_act(hidden, c_out, 1, 1, None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = DropPath(drop_path) if self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.body(x)) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                 image_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        upscaled = image_size is not None and image_size > 64
        self.resize = InputResize(image_size)
        c = _divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_act(3, c, 3, 2 if upscaled else 1, activation)]
        rates = iter(drop_path_rates(sum(n for _, _, n, _ in SETTINGS), drop_path))
        for i, (t, ch, n, s) in enumerate(SETTINGS):
            if i == 1 and not upscaled:
                s = 1  # CIFAR: keep 32 px for one more stage
            c_out = _divisible(ch * width)
            for j in range(n):
                layers.append(InvertedResidual(c, c_out, s if j == 0 else 1, t, activation, next(rates)))
                c = c_out
        last = _divisible(1280 * max(1.0, width))
        layers.append(conv_bn_act(c, last, 1, 1, activation))
        self.features = nn.Sequential(*layers)
        self.num_features = last
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.resize(x))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@register_model("mobilenetv2", family="mobilenetv2")
def mobilenetv2(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                image_size: int | None = None) -> nn.Module:
    """MobileNetV2; CIFAR strides by default, `image_size=96` upscales inside the model (the reference table's 96px row)."""
    return MobileNetV2(num_classes, width, activation, drop_path, image_size)
