"""SE-ResNet (1709.01507) on the ResNetV2 CIFAR skeleton (see resnetv2.py): every bottleneck
gates its residual branch with squeeze-and-excitation (reduction 16, at least 4 hidden units) before
the addition, as in the paper's SE-ResNet module."""

from __future__ import annotations

import torch.nn as nn

from .registry import register_model
from .resnetv2 import PreActBottleneck, ResNetV2


def _senet(depths: list[int], num_classes: int, width: float, activation: str, drop_path: float) -> nn.Module:
    return ResNetV2(PreActBottleneck, depths, num_classes, width, activation, drop_path, se=True)


@register_model("senet50", family="senet")
def senet50(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """SE-ResNetV2-50, bottleneck units [3,4,6,3]."""
    return _senet([3, 4, 6, 3], num_classes, width, activation, drop_path)


@register_model("senet101", family="senet")
def senet101(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """SE-ResNetV2-101, bottleneck units [3,4,23,3]."""
    return _senet([3, 4, 23, 3], num_classes, width, activation, drop_path)


@register_model("senet152", family="senet")
def senet152(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """SE-ResNetV2-152, bottleneck units [3,8,36,3]."""
    return _senet([3, 8, 36, 3], num_classes, width, activation, drop_path)
