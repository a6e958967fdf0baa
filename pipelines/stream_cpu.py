"""CPU decoders of the streaming JPEG pipeline: a batch of JPEG bytes, one crop box and flip per image, in
and the fixed-size (B, res, res, 3) uint8 batch out (NHWC). The same call as the GPU decoders
(stream_gpu.py): `decoder(jpegs, boxes, flips, res)`, boxes (top, left, height, width) in the STORED image's
pixels (fasttrain/data/crops.py).

  CpuCropDecoder        the fast path: a C++ extension over libjpeg-turbo (cuda_ext/csrc/jpeg_decode_cpu.cpp).
                        Each image is decoded at the smallest DCT scale (1/8, 1/4, 1/2, 1) that keeps the
                        crop >= res in both directions, only the rows and columns of the crop, then resized
                        (antialiased bilinear, cuda_ext/csrc/crop_resize.h) and flipped straight into the
                        batch; a thread pool over the images, the GIL released, no per-image Python.
  ReferenceCropDecoder  the reference: simplejpeg (libjpeg-turbo) decodes the whole image, resized_crop
                        (float32, antialias=True) resizes, rounding as crop_resize.h (half to even), then
                        the flip. One image at a time, in Python: the ground truth, not a fast path.

The two agree within +-1 level where the C++ path decodes at full scale (DCT scale 8/8: same decoded
pixels, float rounding of the resize); where it decodes at a reduced DCT scale the pixels it starts
from differ (the DCT's own box-like downscale instead of the resize's triangle filter): on photos at
224 px that is about 0.5-1 level mean absolute difference, PSNR > 40 dB (tests/test_stream_decode.py).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch


class JpegDecodeError(ValueError):
    """Image `position` of a batch could not be decoded; `message` says why (the pipeline names the sample)."""

    def __init__(self, position: int, message: str):
        super().__init__(f"image {position} of the batch: {message}")
        self.position = position
        self.message = message


def _checked(jpegs: list[bytes], boxes, flips) -> tuple[np.ndarray, np.ndarray]:
    b = np.ascontiguousarray(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    f = np.ascontiguousarray(np.asarray(flips, dtype=bool).reshape(-1))
    if len(b) != len(jpegs) or len(f) != len(jpegs):
        raise ValueError(f"{len(jpegs)} images need {len(jpegs)} boxes and flips, got {len(b)} and {len(f)}")
    return b, f


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CpuCropDecoder:
    """libjpeg-turbo with DCT scaling and region decode + crop_resize.h, `threads` images at a time.
    `dct_scaling=False` always decodes at full scale (then it equals the reference within +-1 level)."""

    name = "cpu"

    def __init__(self, threads: int | None = None, *, dct_scaling: bool = True):
        from fasttrain.cuda_ext import jpeg_cpu

        self.ext = jpeg_cpu.load()  # raises ExtensionUnavailable with the reason and the fix
        self.threads = threads or default_threads()
        self.dct_scaling = dct_scaling

    def __call__(self, jpegs: list[bytes], boxes, flips, res: int, out: torch.Tensor | None = None) -> torch.Tensor:
        b, f = _checked(jpegs, boxes, flips)
        sizes = np.fromiter((len(j) for j in jpegs), dtype=np.int64, count=len(jpegs))
        offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        joined = b"".join(jpegs)
        with warnings.catch_warnings():  # torch warns that bytes are read-only; the decoder only reads them
            warnings.simplefilter("ignore", UserWarning)
            data = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
        if out is None:
            out = torch.empty((len(jpegs), res, res, 3), dtype=torch.uint8)
        failed = self.ext.decode_crop_batch(data, torch.from_numpy(offsets), torch.from_numpy(b),
                                            torch.from_numpy(f), out, self.threads, self.dct_scaling)
        if failed:
            raise JpegDecodeError(*failed[0])
        return out


class ReferenceCropDecoder:
    """simplejpeg full decode (libjpeg-turbo, ISLOW) + torchvision resized_crop (float32, antialias) + flip,
    image by image."""

    name = "reference"

    def __init__(self):
        try:
            import simplejpeg
        except ImportError as e:
            raise ImportError(f"the reference JPEG decoder needs simplejpeg ({e}); fix: pip install simplejpeg") from e
        self.simplejpeg = simplejpeg

    def __call__(self, jpegs: list[bytes], boxes, flips, res: int) -> torch.Tensor:
        from torchvision.transforms.v2.functional import resized_crop

        b, f = _checked(jpegs, boxes, flips)
        out = torch.empty((len(jpegs), res, res, 3), dtype=torch.uint8)
        for i, jpeg in enumerate(jpegs):
            try:
                rgb = self.simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
            except ValueError as e:
                raise JpegDecodeError(i, f"corrupt or unsupported JPEG data (simplejpeg: {e})") from e
            top, left, h, w = (int(v) for v in b[i])
            if h < 1 or w < 1 or top < 0 or left < 0 or top + h > rgb.shape[0] or left + w > rgb.shape[1]:
                raise JpegDecodeError(i, f"crop box (top {top}, left {left}, {h} x {w}) outside the "
                                         f"{rgb.shape[0]} x {rgb.shape[1]} image")
            x = torch.from_numpy(rgb).permute(2, 0, 1).float()
            y = resized_crop(x, top, left, h, w, [res, res], antialias=True)
            y = y.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)  # crop_resize.h's rounding: half to even
            out[i] = y.flip(1) if f[i] else y
        return out
