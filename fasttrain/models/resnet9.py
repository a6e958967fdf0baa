"""ResNet9 (Myrtle / David Page, DAWNBench) and the CIFAR-100 variant with a 1028-wide stage."""

from __future__ import annotations

import torch.nn as nn

from .layers import Mul, make_activation
from .registry import register_model


def conv_bn(c_in: int, c_out: int, activation: str, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        make_activation(activation),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, activation), conv_bn(channels, channels, activation))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """prep(64) -> 128+pool+res -> 256+pool -> 512+pool+res [-> extra+pool+res] -> global max pool -> linear.

    `width` scales every channel count (1.0 = Myrtle's 64/128/256/512). `logit_scale` is Myrtle's 0.125.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, activation: str = "relu",
                 extra_stage: int = 0, logit_scale: float = 0.125, in_channels: int = 3):
        super().__init__()
        c = [max(8, round(w * width)) for w in (64, 128, 256, 512)]
        layers: list[nn.Module] = [
            conv_bn(in_channels, c[0], activation),
            conv_bn(c[0], c[1], activation, pool=True),
            Residual(c[1], activation),
            conv_bn(c[1], c[2], activation, pool=True),
            conv_bn(c[2], c[3], activation, pool=True),
            Residual(c[3], activation),
        ]
        last = c[3]
        if extra_stage:
            layers += [conv_bn(c[3], extra_stage, activation, pool=True), Residual(extra_stage, activation)]
            last = extra_stage
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(last, num_classes, bias=False),
                                  Mul(logit_scale))

    def forward(self, x):
        return self.head(self.features(x))


@register_model("resnet9", family="resnet9")
def resnet9(num_classes: int = 10, width: float = 1.0, activation: str = "relu") -> nn.Module:
    """Myrtle's ResNet9 (DAWNBench): 94% on CIFAR-10 in 24 epochs."""
    return ResNet9(num_classes, width=width, activation=activation)


@register_model("resnet9_c100", family="resnet9")
def resnet9_c100(num_classes: int = 100, width: float = 1.0, activation: str = "relu") -> nn.Module:
    """The CIFAR-100 ResNet9 variant: ResNet9 with an extra 1028-wide conv + residual stage, for CIFAR-100."""
    return ResNet9(num_classes, width=width, activation=activation, extra_stage=round(1028 * width), logit_scale=1.0)
