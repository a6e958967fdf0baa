"""Batch augmentation: `AugmentSampler.sample` draws all randomness, `augment_batch` applies it.

`augment_batch` dispatches to the fastest implementation available for the tensor's device; the
pure-PyTorch reference (`reference.apply`) is the ground truth and the fallback. Set
`FASTTRAIN_AUGMENT=reference` to force the reference everywhere.
"""

from __future__ import annotations

import os

import torch

from .reference import (
    AugmentConfig,
    AugmentSampler,
    AugParams,
    Targets,
    apply,
    identity_params,
    norm_constants,
    normalize,
)

__all__ = [
    "AugmentConfig", "AugmentSampler", "AugParams", "Targets", "apply", "augment_batch", "identity_params",
    "norm_constants", "normalize", "backend_for",
]

BACKENDS = ("auto", "reference")


def backend_for(device: torch.device, requested: str | None = None) -> str:
    """The implementation `augment_batch` will use on `device` ('reference' until a fused one exists)."""
    requested = requested or os.environ.get("FASTTRAIN_AUGMENT", "auto")
    if requested not in BACKENDS:
        raise ValueError(f"FASTTRAIN_AUGMENT / backend must be one of {BACKENDS}, got {requested!r}")
    return "reference"


def augment_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    params: AugParams,
    scale: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> tuple[torch.Tensor, Targets]:
    backend_for(x.device, backend)
    return apply(x, labels, params, scale, bias, out_dtype)
