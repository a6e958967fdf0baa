"""The schema of the fused augmentation op, declared once, beside the kernels that register against it
(as torchvision declares its ops next to their C++/CUDA implementations):

  torch.ops.fasttrain.augment(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias,
                              pad, reflect, out_dtype) -> (out, y_b, lam)
  torch.ops.fasttrain.augment_out(... same up to reflect ..., out, y_b, lam) -> ()   (writes in place)

  torch.ops.fasttrain.crop_resize(images, boxes, flips, size) -> (B, size, size, 3) uint8

Implementations: CUDA in csrc/augment_cuda.cu (registered when `loader.load()` loads the library), CPU
(numba) in fasttrain/augment/fused.py, and the fake (shape-only) one below, for torch.compile. The
arguments are plain tensors and scalars; fasttrain/augment/fused.py documents what each one means.
crop_resize: CUDA in csrc/crop_resize_cuda.cu (the arithmetic in csrc/crop_resize.h), its host emulation
`_crop_resize_emulated` (CPU, tests), the fake below; docs/crop_kernel.md documents it:
  images  list of B uint8 tensors (3, H_i, W_i), any strides, one device (decode_jpeg's output)
  boxes   float32 (B, 4) = (y0, x0, h, w) in each image's pixels, on the CPU (it travels with the table)
  flips   bool (B,) on the CPU;  size  the output side S
"""

from __future__ import annotations

import torch
from torch.library import Library

ARGS = ("Tensor x, Tensor labels, Tensor offset, Tensor flip, Tensor cutout, Tensor mix_index, Tensor mix_lam, "
        "Tensor cutmix, Tensor scale, Tensor bias, int pad, bool reflect")
LIB = Library("fasttrain", "FRAGMENT")  # kept alive for the process: it owns the definitions
LIB.define(f"augment({ARGS}, ScalarType out_dtype) -> (Tensor, Tensor, Tensor)")
LIB.define(f"augment_out({ARGS}, Tensor(a!) out, Tensor(b!) y_b, Tensor(c!) lam) -> ()")
LIB.define("crop_resize(Tensor[] images, Tensor boxes, Tensor flips, int size) -> Tensor")


def empty_outputs(x: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised results for images x (N, H, W, C): out (N, C, H, W) channels_last, y_b, lam."""
    n, h, w, c = x.shape
    out = torch.empty((n, c, h, w), dtype=out_dtype, device=x.device, memory_format=torch.channels_last)
    return out, torch.empty(n, dtype=torch.int64, device=x.device), torch.empty(n, dtype=torch.float32, device=x.device)


@torch.library.register_fake("fasttrain::augment", lib=LIB)
def _augment_fake(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                  out_dtype):
    return empty_outputs(x, out_dtype)


@torch.library.register_fake("fasttrain::augment_out", lib=LIB)
def _augment_out_fake(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                      out, y_b, lam) -> None:
    return None


@torch.library.register_fake("fasttrain::crop_resize", lib=LIB)
def _crop_resize_fake(images, boxes, flips, size):
    return images[0].new_empty((len(images), size, size, 3))
