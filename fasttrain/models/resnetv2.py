"""The ResNetV2 CIFAR family of the CIFAR model-zoo reference table (pre-activation units, "Identity Mappings in Deep Residual Networks").

3x3 stem conv to 16 channels (no BN/act after it) -> 4 stages, strides 1,2,2,2, base widths 16,32,64,128
(x4 out for bottleneck units) -> BN, act, global average pool, linear. Shortcuts have no parameters: 2x2
average pool at stride 2, zero channels appended when the width grows. Bottleneck units (BN-act-1x1,
BN-act-3x3, BN-act-1x1) downsample with a fixed [1,2,1]^2/16 blur at stride 2 next to the 3x3 conv;
basic units use a stride-2 first conv.

Where the blur sits: the architecture notes put it after the 3x3 conv (TResNet's order), which runs that conv at
full resolution. The reference table's own FLOPs column (ResNet35b 51.83M, 50b 74.11M, 101b 149.87M, 152b 225.63M,
170b 252.37M multiply-adds) matches only a 3x3 conv at the reduced resolution: our default `blur="before"`
(blur at stride 2, then the 3x3 conv) reproduces those numbers to within the blur's own 0.13M, whereas
"after" costs 21.4M more (+29% for ResNet50b). Parameter counts are the same either way. `width` multiplies every width (ResNetV2's width_factor:
`wide_resnet18` is resnet18v2 at width 4). ResNeXt (`groups`, `mid_scale`) and SE-ResNet (`se`) reuse the
same unit (see resnext.py, senet.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import BlurPool, DropPath, PadShortcut, SqueezeExcite, drop_path_rates, make_activation
from .registry import register_model


class PreActBasic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, activation: str, drop_path: float, **_):
        super().__init__()
        c_out = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), make_activation(activation), nn.Conv2d(c_in, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width), make_activation(activation), nn.Conv2d(width, c_out, 3, 1, 1, bias=False),
        )
        self.shortcut = PadShortcut(c_in, c_out, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.body(x))


class PreActBottleneck(nn.Module):
    """BN-act-1x1 -> BN-act-[blur/2]-3x3 (grouped for ResNeXt) -> BN-act-1x1 [-> SE]; out = 4 x width."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, activation: str, drop_path: float,
                 groups: int = 1, mid_scale: float = 1.0, se: bool = False, blur: str = "before"):
        super().__init__()
        if blur not in ("before", "after"):
            raise ValueError(f"blur must be 'before' or 'after' the 3x3 conv, got {blur!r}")
        mid = round(width * mid_scale)
        c_out = width * self.expansion
        conv3 = nn.Conv2d(mid, mid, 3, 1, 1, groups=groups, bias=False)
        middle: list[nn.Module] = [conv3]
        if stride == 2:
            middle = [BlurPool(mid), conv3] if blur == "before" else [conv3, BlurPool(mid)]
        layers: list[nn.Module] = [
            nn.BatchNorm2d(c_in), make_activation(activation), nn.Conv2d(c_in, mid, 1, bias=False),
            nn.BatchNorm2d(mid), make_activation(activation), *middle,
        ]
        layers += [nn.BatchNorm2d(mid), make_activation(activation), nn.Conv2d(mid, c_out, 1, bias=False)]
        if se:
            layers.append(SqueezeExcite(c_out, reduction=16, activation=activation))
        self.body = nn.Sequential(*layers)
        self.shortcut = PadShortcut(c_in, c_out, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.body(x))


class ResNetV2(nn.Module):
    def __init__(self, unit: type[nn.Module], depths: list[int], num_classes: int = 10, width_factor: float = 1.0,
                 activation: str = "relu", drop_path: float = 0.0, stem_width: int = 16, **unit_kw):
        super().__init__()
        widths = [max(1, round(w * width_factor)) for w in (16, 32, 64, 128)]
        self.stem = nn.Conv2d(3, max(1, round(stem_width * width_factor)), 3, 1, 1, bias=False)
        rates = iter(drop_path_rates(sum(depths), drop_path))
        c_in = self.stem.out_channels
        stages: list[nn.Module] = []
        for i, (w, n) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(unit(c_in, w, stride, activation, next(rates), **unit_kw))
                c_in = w * unit.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(c_in), make_activation(activation))
        self.num_features = c_in
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _v2(unit: type[nn.Module], depths: list[int], num_classes: int, width: float, activation: str,
        drop_path: float) -> ResNetV2:
    return ResNetV2(unit, depths, num_classes, width, activation, drop_path)


@register_model("resnet18v2", family="resnetv2")
def resnet18v2(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-18, basic units [2,2,2,2]."""
    return _v2(PreActBasic, [2, 2, 2, 2], num_classes, width, activation, drop_path)


@register_model("resnet34v2", family="resnetv2")
def resnet34v2(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-34, basic units [3,4,6,3] (seed: 1,327,226 params counting BN statistics)."""
    return _v2(PreActBasic, [3, 4, 6, 3], num_classes, width, activation, drop_path)


@register_model("resnet35b", family="resnetv2")
def resnet35b(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-35, bottleneck units [2,3,4,2] (seed: 873,722)."""
    return _v2(PreActBottleneck, [2, 3, 4, 2], num_classes, width, activation, drop_path)


@register_model("resnet50b", family="resnetv2")
def resnet50b(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-50, bottleneck units [3,4,6,3] (seed: 1,309,210)."""
    return _v2(PreActBottleneck, [3, 4, 6, 3], num_classes, width, activation, drop_path)


@register_model("resnet101b", family="resnetv2")
def resnet101b(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-101, bottleneck units [3,4,23,3] (seed: 2,530,426)."""
    return _v2(PreActBottleneck, [3, 4, 23, 3], num_classes, width, activation, drop_path)


@register_model("resnet152b", family="resnetv2")
def resnet152b(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-152, bottleneck units [3,8,36,3] (seed: 3,528,314)."""
    return _v2(PreActBottleneck, [3, 8, 36, 3], num_classes, width, activation, drop_path)


@register_model("resnet170b", family="resnetv2")
def resnet170b(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-170, bottleneck units [5,9,37,5] (seed: 4,414,202)."""
    return _v2(PreActBottleneck, [5, 9, 37, 5], num_classes, width, activation, drop_path)


@register_model("wide_resnet18", family="resnetv2")
def wide_resnet18(num_classes: int = 10, width: float = 4.0, activation: str = "relu", drop_path: float = 0.0):
    """ResNetV2-18 at width factor 4 (widths 64..512; reference table "WideResNet18": 11,205,578)."""
    return _v2(PreActBasic, [2, 2, 2, 2], num_classes, width, activation, drop_path)
