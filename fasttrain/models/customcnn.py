"""customcnn: the Tiny ImageNet custom CNN "of our own design" (no predefined architecture), for 64 px inputs.

    stem      conv3x3(3 -> w0) - BN - act
    4 stages  widths w0..w3 = 64, 128, 256, 384 (x width); a 2x2 max-pool before stages 2-4
              each stage: `depth` MixBlocks
    MixBlock  branch: conv3x3(c_in -> c) - BN - act - depthwise conv5x5(c) - BN - act - conv1x1(c -> c) - BN
              skip:   identity, or conv1x1 - BN when the width changes;  out = act(branch + skip)
              (the branch's last BN starts at zero scale, so every block starts as its skip path)
              (a cheap 5x5 depthwise layer widens the receptive field between the dense 3x3 and 1x1 mixes)
    head      concat(global average pool, global max pool) - BN - dropout - linear

With the defaults (200 classes) it has 4.2M parameters and sees 64x64 Tiny ImageNet images at full resolution in
the first stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import make_activation
from .registry import register_model


def _conv_bn(c_in: int, c_out: int, k: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class MixBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, activation: str = "relu"):
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_bn(c_in, c_out, 3), make_activation(activation),
            *_conv_bn(c_out, c_out, 5, groups=c_out), make_activation(activation),
            *_conv_bn(c_out, c_out, 1),
        )
        nn.init.zeros_(self.branch[-1].weight)  # each block starts as its skip path: stable at high lr
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(*_conv_bn(c_in, c_out, 1))
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.skip(x))


class CustomCNN(nn.Module):
    def __init__(self, num_classes: int = 200, width: float = 1.0, depth: int = 2, activation: str = "relu",
                 dropout: float = 0.2):
        super().__init__()
        widths = [max(8, round(w * width)) for w in (64, 128, 256, 384)]
        self.stem = nn.Sequential(*_conv_bn(3, widths[0], 3), make_activation(activation))
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(MixBlock(c_in, w, activation))
                c_in = w
        self.stages = nn.Sequential(*layers)
        self.num_features = 2 * c_in
        self.head_norm = nn.BatchNorm1d(self.num_features)  # max-pooled values run large: normalise both
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head_norm(torch.cat([torch.mean(x, dim=(2, 3)), torch.amax(x, dim=(2, 3))], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


@register_model("customcnn", family="custom")
def customcnn(num_classes: int = 200, width: float = 1.0, depth: int = 2, activation: str = "relu",
              dropout: float = 0.2) -> nn.Module:
    """The Tiny ImageNet custom CNN: our own design (MixBlocks: 3x3, depthwise 5x5, 1x1 + skip; avg+max pooled head)."""
    return CustomCNN(num_classes, width, depth, activation, dropout)
