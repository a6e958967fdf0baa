"""ResNeSt-50 (2004.08955), our CIFAR adaptation: split-attention bottlenecks (radix 2, cardinality 1,
64-wide base), the deep stem (three 3x3 convs 32-32-64) at stride 1 without max-pool, average-pool
downsampling after the 3x3 conv ("avd") and in the shortcut ("avg_down")."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, drop_path_rates, make_activation
from .registry import register_model


class SplitAttention(nn.Module):
    """A 3x3 conv producing `radix` feature maps, fused with softmax attention over the radix axis."""

    def __init__(self, channels: int, radix: int, activation: str):
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(channels, channels * radix, 3, 1, 1, groups=radix, bias=False)
        self.bn = nn.BatchNorm2d(channels * radix)
        self.act = make_activation(activation)
        inter = max(channels * radix // 4, 32)
        self.fc1 = nn.Conv2d(channels, inter, 1)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        b, rc = x.shape[:2]
        splits = x.view(b, self.radix, rc // self.radix, *x.shape[2:])
        gap = F.adaptive_avg_pool2d(splits.sum(1), 1)
        attn = self.fc2(self.act(self.bn1(self.fc1(gap)))).view(b, self.radix, rc // self.radix, 1, 1)
        return (splits * attn.softmax(1)).sum(1)


class ResNeStBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, activation: str, drop_path: float, radix: int = 2):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes),
                                   make_activation(activation))
        self.split = SplitAttention(planes, radix, activation)
        self.avd = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3 = nn.Sequential(nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.drop_path = DropPath(drop_path)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.avd(self.split(self.conv1(x))))
        return self.act(self.shortcut(x) + self.drop_path(out))


class ResNeSt(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 10, width: float = 1.0, activation: str = "relu",
                 drop_path: float = 0.0, radix: int = 2):
        super().__init__()
        s = max(8, round(32 * width))

        def cba(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), make_activation(activation)]

        self.stem = nn.Sequential(*cba(3, s), *cba(s, s), *cba(s, 2 * s))
        rates = iter(drop_path_rates(sum(layers), drop_path))
        c = 2 * s
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            planes = max(8, round(64 * width * 2**i))
            blocks = []
            for j in range(n):
                blocks.append(ResNeStBottleneck(c, planes, 2 if (i > 0 and j == 0) else 1, activation, next(rates),
                                                radix))
                c = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnest50", family="resnest")
def resnest50(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
              radix: int = 2) -> nn.Module:
    """ResNeSt-50 (2s1x64d), CIFAR stem."""
    return ResNeSt([3, 4, 6, 3], num_classes, width, activation, drop_path, radix)
