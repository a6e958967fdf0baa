"""crop_resize.h's host path without torch's extension builder: csrc/crop_resize_host.cpp (a C ABI over the
header's separable implementation) compiled by g++ in a second or two and called through ctypes.

It computes the same bytes as the CUDA kernel's emulation and the CPU JPEG decoder (one header, every
float operation rounded on its own: built with -ffp-contract=off). Tests compare against it; the CPU dry
run of `make gpu-check` uses it as the stand-in for the kernel.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from .host_build import build_shared_library


def build_host_library(out_dir: str | Path, *flags: str) -> ctypes.CDLL:
    """Compile csrc/crop_resize_host.cpp with g++ (extra `flags`, e.g. -march=native) into out_dir and load
    it. Raises RuntimeError (host_build.BuildError) when g++ is missing or the compile fails."""
    lib = build_shared_library("fasttrain_crop_host", ("crop_resize_host.cpp",), out_dir,
                               flags=("-O2", "-std=c++17", "-ffp-contract=off", *flags))
    dll = ctypes.CDLL(str(lib))
    dll.fasttrain_crop_resize_host.restype = ctypes.c_int64
    return dll


def host_crop_resize(dll: ctypes.CDLL, images: list[torch.Tensor], boxes, flips, size: int) -> torch.Tensor:
    """The header's host path on B uint8 CPU tensors (3, H, W) of any strides, boxes (B, 4) = (y0, x0, h, w)
    floats in each image's pixels, flips (B,) -> uint8 (B, size, size, 3), as torch.ops.fasttrain.crop_resize."""
    n = len(images)
    for im in images:
        if im.dim() != 3 or im.shape[0] != 3 or im.dtype != torch.uint8 or im.device.type != "cpu":
            raise ValueError(f"images must be uint8 (3, H, W) CPU tensors, got {im.dtype} {tuple(im.shape)} "
                             f"on {im.device}")
    ptrs = (ctypes.c_void_p * n)(*[im.data_ptr() for im in images])
    sizes = np.array([[im.shape[1], im.shape[2]] for im in images], np.int32).reshape(n, 2)
    strides = np.array([[im.stride(1), im.stride(2), im.stride(0)] for im in images], np.int64).reshape(n, 3)
    b = np.ascontiguousarray(np.asarray(boxes, np.float32).reshape(n, 4))
    f = np.ascontiguousarray(np.asarray(flips, np.uint8).reshape(n))
    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    bad = dll.fasttrain_crop_resize_host(ptrs, sizes.ctypes.data_as(ctypes.c_void_p),
                                         strides.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ctypes.c_void_p),
                                         f.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n), ctypes.c_int32(size),
                                         ctypes.c_void_p(out.data_ptr()))
    if bad != -1:
        raise ValueError(f"box {bad} = {b[bad].tolist()} covers no pixel of its {tuple(images[bad].shape[1:])} image")
    return out
