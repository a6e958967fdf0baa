"""Build (cached) and load the CPU JPEG decoder of the streaming pipeline (csrc/jpeg_decode_cpu.cpp).

Plain C++ against libjpeg-turbo (its libjpeg API: DCT scaling, jpeg_crop_scanline, jpeg_skip_scanlines)
and csrc/crop_resize.h, the crop + resize arithmetic the CUDA kernel shares, with a C ABI: no torch header,
so g++ builds it on first use in a few seconds (host_build.py) into `<cache_dir()>/jpeg_cpu`, and ctypes
calls it (releasing the GIL for the call); needs no GPU, no nvcc and no ninja. -ffp-contract=off keeps the
float operations exactly as written (crop_resize.h's rule), so the bytes match the kernel's host emulation.

    decoder = load()
    decoder.decode_crop_batch(data, offsets, boxes, flips, out, threads, allow_scaling) -> [(position, message)]
    decoder.decode_full(bytes, scale_num) -> uint8 [H, W, 3]   (tests)

`data` holds the batch's JPEG files back to back (uint8 1-D), `offsets` int64 [B + 1], `boxes` float64
[B, 4] (top, left, height, width in the stored image's pixels), `flips` bool [B], `out` uint8 [B, S, S, 3]
(filled in place); the returned list names the images that failed (the others are filled).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import torch

from .host_build import BuildError, build_shared_library
from .loader import ExtensionUnavailable, cache_dir

NAME = "fasttrain_jpeg_cpu"
SOURCES = ("jpeg_decode_cpu.cpp",)
CXX_FLAGS = ("-O3", "-std=c++17", "-pthread", "-ffp-contract=off")
LIBS = ("-ljpeg",)
HEADER_DIRS = ("/usr/include", "/usr/local/include", "/opt/homebrew/include", "/usr/local/opt/jpeg-turbo/include")
MESSAGE_BYTES = 512  # room for one image's error message

_lock = threading.Lock()
_decoder: Decoder | None = None
_error: ExtensionUnavailable | None = None

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32


class Decoder:
    """The compiled decoder: tensors in, checked here (the C side trusts its arguments), C calls out."""

    def __init__(self, library: Path):
        self.library = library
        dll = ctypes.CDLL(str(library))
        self._batch = dll.fasttrain_jpeg_decode_crop_batch
        self._batch.argtypes = [_P, _P, _I64, _P, _P, _P, _I32, _I64, _I32, _P, _I64]
        self._batch.restype = _I64
        self._full = dll.fasttrain_jpeg_decode_full
        self._full.argtypes = [_P, _I64, _I32, _P, _I64, ctypes.POINTER(_I64), ctypes.POINTER(_I64), _P, _I64]
        self._full.restype = _I32

    def decode_crop_batch(self, data: torch.Tensor, offsets: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                          out: torch.Tensor, threads: int, allow_scaling: bool) -> list[tuple[int, str]]:
        batch = offsets.numel() - 1
        _need(data.dtype == torch.uint8 and data.dim() == 1 and data.is_contiguous(), "data: uint8 1-D")
        _need(offsets.dtype == torch.int64 and offsets.dim() == 1 and batch >= 0 and offsets.is_contiguous(),
              "offsets: int64 [B + 1]")
        _need(boxes.dtype == torch.float64 and tuple(boxes.shape) == (batch, 4) and boxes.is_contiguous(),
              "boxes: float64 [B, 4]")
        _need(flips.dtype == torch.bool and flips.numel() == batch and flips.is_contiguous(), "flips: bool [B]")
        _need(out.dtype == torch.uint8 and out.dim() == 4 and out.shape[0] == batch and out.shape[1] == out.shape[2]
              and out.shape[3] == 3 and out.is_contiguous(), "out: contiguous uint8 [B, S, S, 3]")
        for t in (data, offsets, boxes, flips, out):
            _need(t.device.type == "cpu", "every tensor must be on the CPU")
        if batch == 0:
            return []
        ends = offsets.tolist()
        bad = next((i for i in range(batch) if not 0 <= ends[i] <= ends[i + 1] <= data.numel()), None)
        _need(bad is None, f"offsets out of range at {bad}")
        messages = ctypes.create_string_buffer(batch * MESSAGE_BYTES)
        failed = self._batch(data.data_ptr(), offsets.data_ptr(), batch, boxes.data_ptr(), flips.data_ptr(),
                             out.data_ptr(), int(out.shape[1]), max(1, int(threads)), int(bool(allow_scaling)),
                             ctypes.addressof(messages), MESSAGE_BYTES)
        if not failed:
            return []
        raw = messages.raw
        found = [(i, raw[i * MESSAGE_BYTES:(i + 1) * MESSAGE_BYTES].split(b"\0", 1)[0].decode(errors="replace"))
                 for i in range(batch)]
        return [(i, message) for i, message in found if message]

    def decode_full(self, data: torch.Tensor, scale_num: int) -> torch.Tensor:
        """One JPEG (uint8 1-D) -> uint8 [H, W, 3] at DCT scale scale_num/8."""
        _need(data.dtype == torch.uint8 and data.dim() == 1 and data.is_contiguous(), "bytes: uint8 1-D")
        _need(1 <= scale_num <= 8, "scale_num must lie in [1, 8]")
        h, w = _I64(), _I64()
        error = ctypes.create_string_buffer(MESSAGE_BYTES)

        def decode(out: torch.Tensor | None) -> int:  # 0: decoded into out; 1: only h, w were read; -1: error
            return self._full(data.data_ptr(), data.numel(), scale_num, None if out is None else out.data_ptr(),
                              0 if out is None else out.numel(), ctypes.byref(h), ctypes.byref(w),
                              ctypes.addressof(error), MESSAGE_BYTES)

        code = decode(None)
        if code == 1:
            out = torch.empty((h.value, w.value, 3), dtype=torch.uint8)
            code = decode(out)
        if code != 0:
            raise ValueError(error.value.decode(errors="replace"))
        return out


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"fasttrain JPEG decoder: {what}")


def _check_libjpeg() -> None:
    extra = [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p]
    if not any(Path(d, "jpeglib.h").exists() for d in (*extra, *HEADER_DIRS)):
        raise ExtensionUnavailable(
            "the libjpeg-turbo headers (jpeglib.h) are not installed",
            "install them (Debian/Ubuntu: apt install libjpeg62-turbo-dev or libjpeg-turbo8-dev; conda: "
            "conda install libjpeg-turbo), or use the reference decoder (--set stream_decoder=reference)")


def build(build_dir: str | Path | None = None) -> Decoder:
    """Compile (or reuse the cached build) and load the decoder; raises ExtensionUnavailable."""
    _check_libjpeg()
    out = Path(build_dir) if build_dir is not None else cache_dir() / "jpeg_cpu"
    try:
        library = build_shared_library(NAME, SOURCES, out, flags=CXX_FLAGS, libs=LIBS)
    except BuildError as e:
        raise ExtensionUnavailable(f"building the CPU JPEG decoder in {out} failed ({e})",
                                   "install g++ and the libjpeg-turbo headers, or use the reference decoder "
                                   "(--set stream_decoder=reference)") from e
    return Decoder(library)


def load() -> Decoder:
    """The decoder (built on first use); a failure is remembered, so the build is tried once."""
    global _decoder, _error
    with _lock:
        if _decoder is not None:
            return _decoder
        if _error is not None:
            raise _error
        try:
            _decoder = build()
        except ExtensionUnavailable as e:
            _error = e
            raise
        return _decoder


def available() -> bool:
    try:
        load()
        return True
    except ExtensionUnavailable:
        return False
