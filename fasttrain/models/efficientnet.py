"""EfficientNet-B0 (1905.11946): MBConv blocks with squeeze-and-excitation and swish.

CIFAR mode (default): stride-1 stem and stride 1 in the 24-wide stage (32 px ends at 4x4). `image_size`
upscales the input inside the model (e.g. 224 for the paper's resolution) and restores the ImageNet
strides once it is above 64 px.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import InputResize, drop_path_rates
from .mobilenetv2 import InvertedResidual, _divisible, conv_bn_act
from .registry import register_model

# (expansion, kernel, stride, channels, repeats) of B0.
B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
      (6, 3, 1, 320, 1)]


def MBConv(c_in: int, c_out: int, k: int, stride: int, expand: int, activation: str, drop_path: float) -> nn.Module:
    """EfficientNet's block: the inverted residual with a kxk depthwise conv and squeeze-excite."""
    return InvertedResidual(c_in, c_out, stride, expand, activation, drop_path, kernel=k,
                            se_hidden=max(1, c_in // 4))


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, activation: str = "swish", drop_path: float = 0.0,
                 image_size: int | None = None, dropout: float = 0.2):
        super().__init__()
        upscaled = image_size is not None and image_size > 64
        self.resize = InputResize(image_size)
        c = _divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_act(3, c, 3, 2 if upscaled else 1, activation)]
        rates = iter(drop_path_rates(sum(r for *_, r in B0), drop_path))
        for i, (t, k, s, ch, n) in enumerate(B0):
            if i == 1 and not upscaled:
                s = 1
            c_out = _divisible(ch * width)
            for j in range(n):
                layers.append(MBConv(c, c_out, k, s if j == 0 else 1, t, activation, next(rates)))
                c = c_out
        last = _divisible(1280 * width)
        layers.append(conv_bn_act(c, last, 1, 1, activation))
        self.features = nn.Sequential(*layers)
        self.num_features = last
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.resize(x))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@register_model("efficientnet_b0", family="efficientnet")
def efficientnet_b0(num_classes: int = 10, width: float = 1.0, activation: str = "swish", drop_path: float = 0.0,
                    image_size: int | None = None) -> nn.Module:
    """EfficientNet-B0, CIFAR strides by default (about 4.0M params with 10 classes)."""
    return EfficientNet(num_classes, width, activation, drop_path, image_size)
