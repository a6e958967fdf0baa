"""The common CIFAR ResNet18 (kuangliu/pytorch-cifar: 3x3 stem, no max-pool) and PreAct-ResNet18.

`ResNet` is also the base other families build on: `post_block(channels) -> nn.Module` inserts a module
after every residual block (resnet18_attn puts CBAM-style attention there), `forward_features` gives the
pooled embedding (width `num_features`) and `fc` is the classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .layers import DropPath, drop_path_rates, make_activation
from .registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes), then act."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1, activation: str = "relu", drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.drop_path = DropPath(drop_path)
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(self.shortcut(x) + self.drop_path(out))


class PreActBlock(nn.Module):
    """BN-act-conv3x3-BN-act-conv3x3 + shortcut (He et al. 2016, identity mappings). When the shape
    changes, the shortcut is a 1x1 conv on the pre-activated input, as in the paper."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1, activation: str = "relu", drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return skip + self.drop_path(out)


def make_stem(kind: str, width: int, activation: str, norm_act: bool = True) -> nn.Sequential:
    """'cifar': 3x3 conv, stride 1 (32-64 px inputs). 'imagenet': 7x7 stride 2 conv + 3x3 max-pool."""
    if kind == "cifar":
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False)]
    elif kind == "imagenet":
        layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False)]
    else:
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {kind!r}")
    if norm_act:
        layers += [nn.BatchNorm2d(width), make_activation(activation)]
    if kind == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """stem -> 4 stages (strides 1,2,2,2; widths 64..512 x `width`) -> [final BN-act] -> avg-pool -> fc."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 10, width: float = 1.0,
                 activation: str = "relu", drop_path: float = 0.0, stem: str = "cifar",
                 post_block: Callable[[int], nn.Module] | None = None):
        super().__init__()
        widths = [max(8, round(w * width)) for w in (64, 128, 256, 512)]
        preact = block is PreActBlock
        # A pre-activation net starts with a bare conv; its first block normalises and activates.
        self.stem = make_stem(stem, widths[0], activation, norm_act=not preact)
        rates = iter(drop_path_rates(sum(layers), drop_path))
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, layers)):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(block(c_in, w, 2 if (i > 0 and j == 0) else 1, activation, next(rates)))
                c_in = w * block.expansion
                if post_block is not None:
                    blocks.append(post_block(c_in))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(c_in), make_activation(activation)) if preact else nn.Identity()
        self.num_features = c_in
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model("resnet18", family="resnet")
def resnet18(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
             stem: str = "cifar") -> nn.Module:
    """The common CIFAR ResNet18 (11.2M params): 3x3 stem, no max-pool, [2,2,2,2] basic blocks.
    `stem='imagenet'` gives the torchvision 7x7/2 + max-pool stem for large inputs."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, activation, drop_path, stem)


@register_model("preact_resnet18", family="resnet")
def preact_resnet18(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                    stem: str = "cifar") -> nn.Module:
    """Pre-activation ResNet18 (1603.05027) with the CIFAR stem."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, width, activation, drop_path, stem)
