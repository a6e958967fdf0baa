"""CBAM-style attention (Woo et al. 2018, "CBAM: Convolutional Block Attention Module") and resnet18_attn.

ResNet18 with attention calls for two attention modules ("block 1", "block 2") after each residual block;
its figures are missing, so the blocks are CBAM's two:

  block 1, channel attention   M_c(x) = MLP(avgpool(x)) + MLP(maxpool(x))        (N, C, 1, 1) logits
                               MLP = 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (shared by both pools)
  block 2, spatial attention   M_s(x) = BN(conv7x7([mean_c(x); max_c(x)]))       (N, 1, H, W) logits

Placement of the pair ('both'):
  sequential  y = x * sigmoid(M_c(x));  out = y * sigmoid(M_s(y))       (CBAM's channel-then-spatial order)
  parallel    out = x * sigmoid(M_c(x) + M_s(x))                        (both maps from x, broadcast-added
                                                                         before one gate, as in BAM)
With `attention='channel'` or `'spatial'` only that block is inserted (placement does not matter then).
The module is inserted after every BasicBlock of the CIFAR ResNet18 (8 places), via ResNet's post_block hook.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..choices import ATTENTION_BLOCKS, PLACEMENTS
from .registry import register_model
from .resnet import BasicBlock, ResNet



class ChannelAttention(nn.Module):
    """CBAM block 1: channel gates from average- and max-pooled descriptors through a shared MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        return self.mlp(avg) + self.mlp(mx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.logits(x))


class SpatialAttention(nn.Module):
    """CBAM block 2: a spatial gate from the channel-wise mean and max maps through one k x k conv."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.bn(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.logits(x))


class AttentionBlock(nn.Module):
    """Channel and/or spatial attention, sequential or parallel (see the module docstring)."""

    def __init__(self, channels: int, attention: str = "both", placement: str = "sequential", reduction: int = 16,
                 spatial_kernel: int = 7):
        super().__init__()
        if attention not in ATTENTION_BLOCKS:
            raise ValueError(f"attention must be one of {ATTENTION_BLOCKS}, got {attention!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.channel = ChannelAttention(channels, reduction) if attention in ("both", "channel") else None
        self.spatial = SpatialAttention(spatial_kernel) if attention in ("both", "spatial") else None
        self.placement = placement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None and self.spatial is not None and self.placement == "parallel":
            return x * torch.sigmoid(self.channel.logits(x) + self.spatial.logits(x))
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x


@register_model("resnet18_attn", family="resnet")
def resnet18_attn(num_classes: int = 10, width: float = 1.0, activation: str = "relu", drop_path: float = 0.0,
                  stem: str = "cifar", attention: str = "both", placement: str = "sequential", reduction: int = 16,
                  spatial_kernel: int = 7) -> nn.Module:
    """ResNet18 (CIFAR stem; 'imagenet' for 224 px) with CBAM-style attention after every residual block."""
    def post_block(channels: int) -> nn.Module:
        return AttentionBlock(channels, attention, placement, reduction, spatial_kernel)

    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, activation, drop_path, stem, post_block=post_block)
