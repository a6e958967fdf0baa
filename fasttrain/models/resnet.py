"""The common CIFAR ResNet18 (kuangliu/pytorch-cifar: 3x3 stem, no max-pool), PreAct-ResNet18, and the
ImageNet ResNet-50 (torchvision's layout, v1.5: the stride on the 3x3 conv of the bottleneck).

`stem='imagenet'` gives torchvision's 7x7/2 conv + 3x3/2 max-pool for 160-256 px inputs; with it and
`init='torchvision'` (Kaiming-normal fan-out convs, as torchvision builds its ResNets) resnet18 is
torchvision's ResNet-18. `blurpool=True` puts a fixed 3x3 blur before every strided conv that reads >= 16
channels, exactly as FFCV's ImageNet recipes do (their BlurPoolConv2d: stride-1 blur, zero padding).

`ResNet` is also the base other families build on: `post_block(channels) -> nn.Module` inserts a module
after every residual block (resnet18_attn puts CBAM-style attention there), `forward_features` gives the
pooled embedding (width `num_features`) and `fc` is the classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .layers import BlurPool, DropPath, drop_path_rates, make_activation
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


class Bottleneck(nn.Module):
    """conv1x1-BN-act-conv3x3(stride)-BN-act-conv1x1-BN + shortcut, then act; out = 4 x width (ResNet v1.5,
    torchvision's Bottleneck)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, activation: str = "relu", drop_path: float = 0.0):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = make_activation(activation)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.drop_path = DropPath(drop_path)
        self.act3 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(self.shortcut(x) + self.drop_path(out))


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


def add_blurpool(module: nn.Module) -> None:
    """Every conv with stride > 1 reading >= 16 channels becomes blur (3x3, stride 1, zero padding) then
    that conv: FFCV's apply_blurpool (libffcv/ffcv-imagenet train_imagenet.py). The RGB stem is left alone."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, nn.Sequential(BlurPool(child.in_channels, stride=1, pad="zeros"), child))
        else:
            add_blurpool(child)


def init_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan-out, ReLU) convs, BatchNorm 1 and 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """stem -> 4 stages (strides 1,2,2,2; widths 64..512 x `width`) -> [final BN-act] -> avg-pool -> fc."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 10, width: float = 1.0,
                 activation: str = "relu", drop_path: float = 0.0, stem: str = "cifar",
                 post_block: Callable[[int], nn.Module] | None = None, blurpool: bool = False,
                 init: str = "pytorch"):
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
        if init not in ("pytorch", "torchvision"):
            raise ValueError(f"init must be 'pytorch' (torch's layer defaults) or 'torchvision', got {init!r}")
        if init == "torchvision":
            init_torchvision(self)
        if blurpool:
            add_blurpool(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model("resnet18", family="resnet")
def resnet18(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
             stem: str = "cifar", blurpool: bool = False, init: str = "pytorch") -> nn.Module:
    """The common CIFAR ResNet18 (11.2M params): 3x3 stem, no max-pool, [2,2,2,2] basic blocks.
    `stem='imagenet'` gives the torchvision 7x7/2 + max-pool stem for large inputs (with init='torchvision':
    torchvision's ResNet-18); `blurpool=True` blurs before each strided conv (FFCV's ImageNet recipes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, activation, drop_path, stem, blurpool=blurpool,
                  init=init)


@register_model("resnet50", family="resnet")
def resnet50(num_classes: int = 1000, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
             stem: str = "imagenet", blurpool: bool = False, init: str = "torchvision") -> nn.Module:
    """ImageNet ResNet-50 (25.6M params at 1000 classes): torchvision's resnet50 (v1.5), 7x7/2 stem + max-pool,
    [3,4,6,3] bottlenecks; `blurpool=True` as FFCV's recipes. The CIFAR pre-activation one is resnet50b."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width, activation, drop_path, stem, blurpool=blurpool,
                  init=init)


@register_model("preact_resnet18", family="resnet")
def preact_resnet18(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                    stem: str = "cifar") -> nn.Module:
    """Pre-activation ResNet18 (1603.05027) with the CIFAR stem."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, width, activation, drop_path, stem)
