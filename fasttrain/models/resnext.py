"""ResNeXt with cardinality 32 (1611.05431) on the ResNetV2 CIFAR skeleton (see resnetv2.py).

The 3x3 conv of each bottleneck is grouped (32 groups) and twice as wide as ResNetV2's (the paper's
complexity-preserving choice: ResNet-50's 64-wide middle becomes 32x4d = 128); outputs stay 4x the base
widths 16,32,64,128, so the shortcuts are the same parameter-free ones.
"""

from __future__ import annotations

import torch.nn as nn

from .registry import register_model
from .resnetv2 import PreActBottleneck, ResNetV2


def _resnext(depths: list[int], num_classes: int, width: float, activation: str, drop_path: float,
             cardinality: int) -> nn.Module:
    mid = 2 * max(1, round(16 * width))  # the first stage's grouped conv, as ResNetV2 sizes it
    if mid % cardinality:
        raise ValueError(f"width={width}: the first stage's grouped conv ({mid} channels) must be divisible by "
                         f"the cardinality {cardinality}")
    return ResNetV2(PreActBottleneck, depths, num_classes, width, activation, drop_path,
                    groups=cardinality, mid_scale=2.0)


@register_model("resnext50_32", family="resnext")
def resnext50_32(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                 cardinality: int = 32) -> nn.Module:
    """ResNeXt-50 C32, bottleneck units [3,4,6,3]."""
    return _resnext([3, 4, 6, 3], num_classes, width, activation, drop_path, cardinality)


@register_model("resnext101_32", family="resnext")
def resnext101_32(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                  cardinality: int = 32) -> nn.Module:
    """ResNeXt-101 C32, bottleneck units [3,4,23,3]."""
    return _resnext([3, 4, 23, 3], num_classes, width, activation, drop_path, cardinality)


@register_model("resnext152_32", family="resnext")
def resnext152_32(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                  cardinality: int = 32) -> nn.Module:
    """ResNeXt-152 C32, bottleneck units [3,8,36,3]."""
    return _resnext([3, 8, 36, 3], num_classes, width, activation, drop_path, cardinality)
