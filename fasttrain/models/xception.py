"""Xception (1610.02357), our CIFAR adaptation: the two stem convs keep 32 px (stride 1, padding 1);
entry flow (128, 256, 728 with stride-2 max-pool), middle flow (8 residual blocks of three separable
convs, 728 wide), exit flow (728 -> 1024 /2, then separable 1536 and 2048). The residual branches of
every block take drop_path."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DropPath, drop_path_rates, make_activation
from .registry import register_model


class SeparableConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False))


def _act(activation: str, inplace: bool) -> nn.Module:
    act = make_activation(activation)
    if hasattr(act, "inplace"):
        act.inplace = inplace  # the first activation must not overwrite the block input the shortcut reads
    return act


class XceptionBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, reps: int, stride: int, activation: str, drop_path: float,
                 start_with_act: bool = True, grow_first: bool = True):
        super().__init__()
        self.skip = None
        if c_out != c_in or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        chans = [c_in] + ([c_out] * reps if grow_first else [c_in] * (reps - 1) + [c_out])
        layers: list[nn.Module] = []
        for i in range(reps):
            if i > 0 or start_with_act:
                layers.append(_act(activation, inplace=i > 0))
            layers += [SeparableConv(chans[i], chans[i + 1]), nn.BatchNorm2d(chans[i + 1])]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x) if self.skip is not None else x
        return skip + self.drop_path(self.rep(x))


class Xception(nn.Module):
    def __init__(self, num_classes: int = 10, activation: str = "relu", drop_path: float = 0.0):
        super().__init__()
        a = activation
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), make_activation(a),
                                  nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), make_activation(a))
        specs = [(64, 128, 2, 2, False, True), (128, 256, 2, 2, True, True), (256, 728, 2, 2, True, True)]
        specs += [(728, 728, 3, 1, True, True)] * 8
        specs += [(728, 1024, 2, 2, True, False)]
        rates = drop_path_rates(len(specs), drop_path)
        self.blocks = nn.Sequential(*[XceptionBlock(ci, co, r, s, a, p, swa, gf)
                                      for (ci, co, r, s, swa, gf), p in zip(specs, rates)])
        self.exit = nn.Sequential(SeparableConv(1024, 1536), nn.BatchNorm2d(1536), make_activation(a),
                                  SeparableConv(1536, 2048), nn.BatchNorm2d(2048), make_activation(a))
        self.num_features = 2048
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.exit(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("xception", family="xception")
def xception(num_classes: int = 10, activation: str = "relu", drop_path: float = 0.0) -> nn.Module:
    """Xception with a CIFAR stem (about 20.8M params)."""
    return Xception(num_classes, activation, drop_path)
