"""Small building blocks shared by the model families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..choices import ACTIVATIONS


def make_activation(name: str = "relu") -> nn.Module:
    """relu | mish (x tanh(softplus x)) | swish (x sigmoid x, a.k.a. SiLU) | gelu."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Mul(nn.Module):
    """Multiplies by a constant (e.g. the logit scale of ResNet9 / airbench)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability p in training, scaling the
    survivors by 1/(1-p) so the expected output is unchanged; identity at eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def global_pool(x: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1).flatten(1) if mode == "avg" else F.adaptive_max_pool2d(x, 1).flatten(1)


def drop_path_rates(n_blocks: int, drop_path: float) -> list[float]:
    """Stochastic depth's linear rule (1603.09382): block i of n (0-based) drops with p = drop_path*(i+1)/n,
    so the first block almost never drops and the last drops with `drop_path`."""
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must lie in [0, 1), got {drop_path}")
    return [drop_path * (i + 1) / n_blocks for i in range(n_blocks)]


class InputResize(nn.Module):
    """Upscales the input to `size` x `size` (bilinear) inside the model, for nets that were designed
    for larger images (the CIFAR model-zoo reference table's "MobileNetV2 96px" trains on CIFAR upscaled to 96 px)."""

    def __init__(self, size: int | None):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None or x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (1709.01507): channel gates from a global-average-pooled bottleneck MLP."""

    def __init__(self, channels: int, reduction: float = 16, activation: str = "relu", min_hidden: int = 4,
                 hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(min_hidden, round(channels / reduction))
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class BlurPool(nn.Module):
    """Fixed 3x3 [1,2,1]x[1,2,1]/16 depthwise blur at stride 2 (anti-aliased downsampling, as in TResNet).
    The filter is a buffer, not a parameter: it never trains and is not counted as a weight. `pad` is
    "reflect" (TResNet) or "zeros" (FFCV's BlurPoolConv2d, a stride-1 blur before each strided conv)."""

    def __init__(self, channels: int, stride: int = 2, pad: str = "reflect"):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).contiguous(), persistent=False)
        self.stride = stride
        self.channels = channels
        self.pad = {"reflect": "reflect", "zeros": "constant"}[pad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode=self.pad)
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)


class PadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pool when the stride is 2, zero channels appended when the
    width grows (ResNetV2 CIFAR family, PyramidNet)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"PadShortcut cannot shrink channels ({c_in} -> {c_out})")
        self.extra = c_out - c_in
        self.pool = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x
