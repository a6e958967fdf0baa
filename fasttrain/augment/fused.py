"""The fused augmentation op: one pass from the uint8 batch to the network's input.

Two custom ops, declared once in cuda_ext/ops.py beside the CUDA kernels:
  torch.ops.fasttrain.augment(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias,
                              pad, reflect, out_dtype) -> (out, y_b, lam)
  torch.ops.fasttrain.augment_out(... same up to reflect ..., out, y_b, lam) -> ()   (writes in place)
  CPU:  numba (numba_cpu.py), parallel over the batch, registered here.  CUDA: cuda_ext/csrc/augment_cuda.cu,
  registered when the extension is loaded (`fasttrain.cuda_ext.load()`).  Meta/fake: in cuda_ext/ops.py.

Arguments (N images of H x W x C; see reference.py for what every value means):
  x          uint8 (N, H, W, C), any strides (the tensor dataset's NHWC layout, or a permuted NCHW one)
  labels     int64 (N,)
  offset     int32 (N, 2)  (dy, dx) in [0, 2 pad]      flip     bool (N,)
  cutout     int32 (N, 4)  (y0, x0, y1, x1) half-open   mix_index int64 (N,) in [0, N)
  mix_lam    float32 (N,)                              cutmix   int32 (N, 4)
  scale,bias float32 (C,)  normalised = v * scale + bias (scale = 1/(255 std), bias = -mean/std)
  pad        int >= 0 (< min(H, W) when reflect)       reflect  bool: reflect padding, else zero padding
  out_dtype  torch.float32 | torch.bfloat16 | torch.float16
Results: out (N, C, H, W) with channels_last strides (NHWC storage) in out_dtype; y_b int64 (N,) =
labels[mix_index]; lam float32 (N,) = mix_lam * (1 - cutmix area / (H W)), the weight of y_a = labels.
Parameter tensors must be contiguous and on x's device; `fused_apply` below takes an `AugParams` and
does that. Out-of-range offsets or mix indices raise on the CPU; the CUDA kernel clamps them to stay in
bounds (checking would cost a device sync), so pass params from `AugmentSampler`.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from fasttrain.cuda_ext import load as load_cuda_kernels
from fasttrain.cuda_ext.ops import LIB, empty_outputs

from .reference import AugParams, Targets, check_inputs

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PARAM_DTYPES = (("offset", torch.int32, 2), ("flip", torch.bool, 0), ("cutout", torch.int32, 4),
                 ("mix_index", torch.int64, 0), ("mix_lam", torch.float32, 0), ("cutmix", torch.int32, 4))

# numba's default "workqueue" threading layer aborts on concurrent parallel calls: serialise them.
_NUMBA_LOCK = threading.Lock()

def check_op_args(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                  out, y_b, lam) -> None:
    """Shapes, dtypes, devices and layouts of the op's arguments (the C++ side checks the same)."""
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"fasttrain::augment: images must be 4-d uint8 (N, H, W, C); got {x.dim()}-d {x.dtype}")
    n, h, w, c = x.shape
    expect = {"labels": (labels, torch.int64, (n,)), "params.offset": (offset, torch.int32, (n, 2)),
              "params.flip": (flip, torch.bool, (n,)), "params.cutout": (cutout, torch.int32, (n, 4)),
              "params.mix_index": (mix_index, torch.int64, (n,)), "params.mix_lam": (mix_lam, torch.float32, (n,)),
              "params.cutmix": (cutmix, torch.int32, (n, 4)), "scale": (scale, torch.float32, (c,)),
              "bias": (bias, torch.float32, (c,)), "y_b": (y_b, torch.int64, (n,)), "lam": (lam, torch.float32, (n,))}
    for name, (t, dtype, shape) in expect.items():
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"fasttrain::augment: {name} must be {dtype} of shape {shape}, "
                             f"got {t.dtype} {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"fasttrain::augment: {name} is on {t.device} but images are on {x.device}")
    if pad < 0 or (reflect and x.numel() and pad >= min(h, w)):
        raise ValueError(f"fasttrain::augment: pad {pad} must be >= 0 (and < {min(h, w)} for reflect padding)")
    if out.dtype not in OUT_DTYPES:
        raise ValueError(f"fasttrain::augment: out must be one of {OUT_DTYPES}, got {out.dtype}")
    if tuple(out.shape) != (n, c, h, w) or not out.permute(0, 2, 3, 1).is_contiguous():
        raise ValueError(f"fasttrain::augment: out must be (N, C, H, W) = {(n, c, h, w)} channels_last, "
                         f"got shape {tuple(out.shape)} strides {out.stride()}")
    if out.device != x.device:
        raise ValueError(f"fasttrain::augment: out is on {out.device} but images are on {x.device}")


# ------------------------------------------------------------------------------------------ CPU: numba
@torch.library.impl(LIB, "augment_out", "CPU")
def _augment_out_cpu(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                     out, y_b, lam) -> None:
    check_op_args(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                  out, y_b, lam)
    from . import numba_cpu

    flat = out.permute(0, 2, 3, 1).reshape(-1)  # the channels_last storage, as a flat view (no copy)
    kind = OUT_DTYPES.index(out.dtype)  # 0 float32, 1 bfloat16, 2 float16 (numba_cpu.OUT_*)
    dst = flat.numpy() if kind == 0 else flat.view(torch.int16).numpy().view(np.uint16)
    with _NUMBA_LOCK:
        numba_cpu.augment_into(x, labels.numpy(), offset.numpy(), flip.numpy(), cutout.numpy(),
                               mix_index.numpy(), mix_lam.numpy(), cutmix.numpy(), scale.numpy(), bias.numpy(),
                               pad, reflect, kind, dst, y_b.numpy(), lam.numpy())


@torch.library.impl(LIB, "augment", "CPU")
def _augment_cpu(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect, out_dtype):
    if x.dim() != 4:
        raise ValueError(f"fasttrain::augment: images must be 4-d uint8 (N, H, W, C); got {x.dim()}-d")
    out, y_b, lam = empty_outputs(x, out_dtype)
    _augment_out_cpu(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                     out, y_b, lam)
    return out, y_b, lam


# ------------------------------------------------------------------------------------------ Python API
def op_params(params: AugParams, device: torch.device) -> list[torch.Tensor]:
    """The six parameter tensors in the op's order, with the op's dtypes, contiguous, on `device`
    (no copies when they already are, which is what `AugmentSampler` produces)."""
    out = []
    for name, dtype, _ in _PARAM_DTYPES:
        out.append(getattr(params, name).to(device=device, dtype=dtype).contiguous())
    return out


def fused_apply(
    x: torch.Tensor,
    labels: torch.Tensor,
    params: AugParams,
    scale: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    *,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Targets]:
    """`reference.apply` through the fused op on x's device (CUDA kernel or numba). `out`, if given,
    is written in place: (N, C, H, W) channels_last in out_dtype. CUDA needs the extension
    (`fasttrain.cuda_ext.load()`); this raises `ExtensionUnavailable` rather than falling back."""
    check_inputs(x, params, scale, bias)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if x.is_cuda:
        load_cuda_kernels()
    dev = x.device
    args = (x, labels, *op_params(params, dev), scale.to(dev, torch.float32).contiguous(),
            bias.to(dev, torch.float32).contiguous(), int(params.pad), params.pad_mode == "reflect")
    if out is None:
        out, y_b, lam = torch.ops.fasttrain.augment(*args, out_dtype)
    else:
        if out.dtype != out_dtype:
            raise ValueError(f"out has dtype {out.dtype} but out_dtype is {out_dtype}")
        y_b = torch.empty_like(labels)
        lam = torch.empty(len(labels), dtype=torch.float32, device=dev)
        torch.ops.fasttrain.augment_out(*args, out, y_b, lam)
    return out, Targets(labels, y_b, lam)
