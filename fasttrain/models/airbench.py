"""The airbench94 speed net (Keller Jordan, cifar10-airbench), as a zoo model.

A frozen 2x2 patch-whitening conv (initialised from the training images' patch covariance), three
conv groups (conv, max-pool, BN, GELU, conv, BN, GELU), a 3x3 max pool and a scaled linear head.
BatchNorm has a fixed weight of 1 and a learned bias, as in airbench.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Mul, make_activation
from .registry import register_model


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        # airbench's momentum is the running-stat decay: torch's momentum is 1 - that.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias, initialised partly as identity (dirac) like airbench."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, activation: str, bn_momentum: float):
        super().__init__()
        self.conv1 = Conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(c_out, bn_momentum)
        self.conv2 = Conv(c_out, c_out)
        self.norm2 = BatchNorm(c_out, bn_momentum)
        self.activ = make_activation(activation)

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 activation: str = "gelu", bn_momentum: float = 0.6, logit_scale: float = 1 / 9,
                 whiten_bias_epochs: int = 3, head_unit_std: bool = False):
        super().__init__()
        whiten_width = 2 * 3 * 2 * 2
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.whiten_bias_epochs = whiten_bias_epochs
        self.activ = make_activation(activation)
        self.layers = nn.Sequential(
            ConvGroup(whiten_width, widths[0], activation, bn_momentum),
            ConvGroup(widths[0], widths[1], activation, bn_momentum),
            ConvGroup(widths[1], widths[2], activation, bn_momentum),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes, bias=False),
                                  Mul(logit_scale))
        if head_unit_std:  # airbench94_muon: classifier weights rescaled to unit std at init
            linear = self.head[2]
            linear.weight.data.div_(linear.weight.data.std())

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening conv from normalised training images (N, 3, H, W): the eigenvectors of the
        2x2 patch covariance scaled by 1/sqrt(eigenvalue), and their negatives."""
        h, w = self.whiten.weight.shape[2:]
        c = images.shape[1]
        x = images.float()
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
        flat = patches.reshape(len(patches), -1).double()
        cov = flat.T @ flat / len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
        eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
        scaled = (eigenvectors / torch.sqrt(eigenvalues + eps)).to(self.whiten.weight.dtype)
        self.whiten.weight.copy_(torch.cat((scaled, -scaled)))

    def set_epoch(self, epoch: int) -> None:
        """The whitening bias trains for the first few epochs only, then freezes."""
        self.whiten.bias.requires_grad = epoch < self.whiten_bias_epochs

    def forward(self, x):
        x = self.activ(self.whiten(x))
        return self.head(self.layers(x))


@register_model("airbench", family="airbench")
def airbench(num_classes: int = 10, width: float = 1.0, activation: str = "gelu", logit_scale: float = 1 / 9,
             head_unit_std: bool = False) -> nn.Module:
    """airbench94's net; `width` scales the (64, 256, 256) conv groups. airbench94_muon's variant:
    logit_scale = 1/256 (1 / the last width) and head_unit_std=True."""
    widths = tuple(max(8, round(w * width)) for w in (64, 256, 256))
    return AirbenchNet(num_classes, widths=widths, activation=activation, logit_scale=logit_scale,  # type: ignore[arg-type]
                       head_unit_std=head_unit_std)
