"""Batch augmentation: `AugmentSampler.sample` draws all randomness, `augment_batch` applies it.

`augment_batch` dispatches on the tensor's device: CUDA -> the fused kernel (cuda_ext/), CPU -> the
fused numba implementation; the pure-PyTorch reference (`reference.apply`) is the ground truth and the
fallback. `FASTTRAIN_AUGMENT` (or the `backend` argument) chooses:
  auto       fused where available. On a GPU a CUDA extension that cannot be built (no nvcc, compile
             error) is an error that says why and how to fix it: the reference is several times slower
             there, and a run must not be slow without anyone noticing. On a CPU without numba the
             run goes on with the reference after one warning.
  reference  the reference everywhere (the way to train on a GPU whose extension cannot be built)
  fused      the fused op or an error, never a fallback (tests and benchmarks use this)
"""

from __future__ import annotations

import os
import warnings

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
    "AugParams", "AugmentConfig", "AugmentSampler", "FusedAugmentFallback", "Targets", "apply",
    "augment_batch", "backend_for", "identity_params", "norm_constants", "normalize",
]

BACKENDS = ("auto", "reference", "fused")


class FusedAugmentFallback(RuntimeWarning):
    """The fused augmentation is unavailable on this device; the reference runs instead."""


_warned: set[str] = set()


def _fused_backend(device: torch.device) -> str | None:
    """'cuda' or 'numba' once that implementation is usable on `device` (raises why not otherwise); None
    for a device type that has no fused implementation at all (e.g. mps)."""
    if device.type == "cuda":
        from fasttrain.cuda_ext import load

        load()
        return "cuda"
    if device.type == "cpu":
        try:
            from . import numba_cpu  # noqa: F401
        except ImportError as e:
            raise ImportError(f"numba is not importable ({e}); fix: pip install numba") from e
        from . import fused  # noqa: F401  (registers the op)

        return "numba"
    return None


def backend_for(device: torch.device | str, requested: str | None = None) -> str:
    """The implementation `augment_batch` uses on `device`: 'cuda', 'numba' or 'reference'."""
    requested = requested or os.environ.get("FASTTRAIN_AUGMENT") or "auto"
    if requested not in BACKENDS:
        raise ValueError(f"FASTTRAIN_AUGMENT / backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "reference":
        return "reference"
    device = torch.device(device)
    try:
        backend = _fused_backend(device)
    except Exception as e:
        if requested == "fused" or device.type == "cuda":
            raise
        if device.type not in _warned:
            _warned.add(device.type)
            warnings.warn(
                f"fasttrain: the fused {device.type} augmentation is unavailable, using the slower PyTorch "
                f"reference instead. {e} (set FASTTRAIN_AUGMENT=reference to choose the reference explicitly)",
                FusedAugmentFallback, stacklevel=2)
        return "reference"
    if backend is None:  # e.g. mps: no fused op exists, nothing is broken
        if requested == "fused":
            raise ValueError(f"FASTTRAIN_AUGMENT=fused: no fused augmentation for device type {device.type!r}")
        return "reference"
    return backend


def augment_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    params: AugParams,
    scale: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> tuple[torch.Tensor, Targets]:
    """uint8 (N, H, W, C) -> normalised (N, C, H, W) channels_last in out_dtype, and the mixed targets."""
    if backend_for(x.device, backend) == "reference":
        return apply(x, labels, params, scale, bias, out_dtype)
    from .fused import fused_apply

    out, targets = fused_apply(x, labels, params, scale, bias, out_dtype)
    if not params.has_mix:  # y_b == y_a: the same tensor lets the loss skip its second cross-entropy
        targets = Targets(labels, labels, targets.lam)
    return out, targets
