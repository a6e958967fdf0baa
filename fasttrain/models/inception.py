"""Inception-v3 (1512.00567), our CIFAR adaptation of torchvision's layout without the auxiliary head:
the stem keeps 32 px (3x3 convs with padding, no max-pools), so the Inception-A blocks see 32x32 (the
ImageNet net sees 35x35 there), B reduces to 15x15, D to 7x7. Not residual: no drop_path."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import make_activation
from .registry import register_model


class ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k, activation: str, stride: int = 1, padding=0):
        super().__init__(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out, eps=1e-3),
                         make_activation(activation))


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int, act: str):
        super().__init__()
        self.b1 = ConvBN(c_in, 64, 1, act)
        self.b5 = nn.Sequential(ConvBN(c_in, 48, 1, act), ConvBN(48, 64, 5, act, padding=2))
        self.b3 = nn.Sequential(ConvBN(c_in, 64, 1, act), ConvBN(64, 96, 3, act, padding=1),
                                ConvBN(96, 96, 3, act, padding=1))
        self.pool = ConvBN(c_in, pool_features, 1, act)

    def forward(self, x):
        pooled = self.pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), pooled], 1)


class InceptionB(nn.Module):
    """Grid reduction 32 -> 15."""

    def __init__(self, c_in: int, act: str):
        super().__init__()
        self.b3 = ConvBN(c_in, 384, 3, act, stride=2)
        self.b3dbl = nn.Sequential(ConvBN(c_in, 64, 1, act), ConvBN(64, 96, 3, act, padding=1),
                                   ConvBN(96, 96, 3, act, stride=2))

    def forward(self, x):
        return torch.cat([self.b3(x), self.b3dbl(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    """Factorised 7x7 (1x7 and 7x1) branches."""

    def __init__(self, c_in: int, c7: int, act: str):
        super().__init__()
        self.b1 = ConvBN(c_in, 192, 1, act)
        self.b7 = nn.Sequential(ConvBN(c_in, c7, 1, act), ConvBN(c7, c7, (1, 7), act, padding=(0, 3)),
                                ConvBN(c7, 192, (7, 1), act, padding=(3, 0)))
        self.b7dbl = nn.Sequential(
            ConvBN(c_in, c7, 1, act), ConvBN(c7, c7, (7, 1), act, padding=(3, 0)),
            ConvBN(c7, c7, (1, 7), act, padding=(0, 3)), ConvBN(c7, c7, (7, 1), act, padding=(3, 0)),
            ConvBN(c7, 192, (1, 7), act, padding=(0, 3)))
        self.pool = ConvBN(c_in, 192, 1, act)

    def forward(self, x):
        pooled = self.pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([self.b1(x), self.b7(x), self.b7dbl(x), pooled], 1)


class InceptionD(nn.Module):
    """Grid reduction 15 -> 7."""

    def __init__(self, c_in: int, act: str):
        super().__init__()
        self.b3 = nn.Sequential(ConvBN(c_in, 192, 1, act), ConvBN(192, 320, 3, act, stride=2))
        self.b7x3 = nn.Sequential(
            ConvBN(c_in, 192, 1, act), ConvBN(192, 192, (1, 7), act, padding=(0, 3)),
            ConvBN(192, 192, (7, 1), act, padding=(3, 0)), ConvBN(192, 192, 3, act, stride=2))

    def forward(self, x):
        return torch.cat([self.b3(x), self.b7x3(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank: 3x3 branches split into parallel 1x3 and 3x1 convs."""

    def __init__(self, c_in: int, act: str):
        super().__init__()
        self.b1 = ConvBN(c_in, 320, 1, act)
        self.b3_1 = ConvBN(c_in, 384, 1, act)
        self.b3_2a = ConvBN(384, 384, (1, 3), act, padding=(0, 1))
        self.b3_2b = ConvBN(384, 384, (3, 1), act, padding=(1, 0))
        self.b3dbl_1 = nn.Sequential(ConvBN(c_in, 448, 1, act), ConvBN(448, 384, 3, act, padding=1))
        self.b3dbl_2a = ConvBN(384, 384, (1, 3), act, padding=(0, 1))
        self.b3dbl_2b = ConvBN(384, 384, (3, 1), act, padding=(1, 0))
        self.pool = ConvBN(c_in, 192, 1, act)

    def forward(self, x):
        a = self.b3_1(x)
        d = self.b3dbl_1(x)
        return torch.cat([self.b1(x), self.b3_2a(a), self.b3_2b(a), self.b3dbl_2a(d), self.b3dbl_2b(d),
                          self.pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionV3(nn.Module):
    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.5):
        super().__init__()
        a = activation
        self.features = nn.Sequential(
            ConvBN(3, 32, 3, a, padding=1), ConvBN(32, 32, 3, a, padding=1), ConvBN(32, 64, 3, a, padding=1),
            ConvBN(64, 80, 1, a), ConvBN(80, 192, 3, a, padding=1),
            InceptionA(192, 32, a), InceptionA(256, 64, a), InceptionA(288, 64, a),
            InceptionB(288, a),
            InceptionC(768, 128, a), InceptionC(768, 160, a), InceptionC(768, 160, a), InceptionC(768, 192, a),
            InceptionD(768, a),
            InceptionE(1280, a), InceptionE(2048, a),
        )
        self.num_features = 2048
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc(self.dropout(x))


@register_model("inception_v3", family="inception")
def inception_v3(num_classes: int = 10, activation: str = "relu", dropout: float = 0.5) -> nn.Module:
    """Inception-v3 with a CIFAR stem (no auxiliary classifier)."""
    return InceptionV3(num_classes, activation, dropout)
