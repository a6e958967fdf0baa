"""Build (JIT, cached) and load the CPU JPEG decoder of the streaming pipeline (csrc/jpeg_decode_cpu.cpp).

Plain C++ against libjpeg-turbo (its libjpeg API: DCT scaling, jpeg_crop_scanline, jpeg_skip_scanlines)
and csrc/crop_resize.h, the crop + resize arithmetic the CUDA kernel shares. Built by
`torch.utils.cpp_extension.load` on first use (g++, under a minute) into `<cache_dir()>/jpeg_cpu`, beside the
CUDA build; needs no GPU and no nvcc. -ffp-contract=off keeps the float operations exactly as written
(crop_resize.h's rule), so the bytes match the kernel's host emulation.

    decode_crop_batch(data, offsets, boxes, flips, out, threads, allow_scaling) -> [(position, message)]

`data` holds the batch's JPEG files back to back (uint8 1-D), `offsets` int64 [B + 1], `boxes` float64
[B, 4] (top, left, height, width in the stored image's pixels), `flips` bool [B], `out` uint8 [B, S, S, 3]
(filled in place); the returned list names the images that failed (the others are filled).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .loader import ExtensionUnavailable, cache_dir, jit_build

NAME = "fasttrain_jpeg_cpu"
SOURCES = ("jpeg_decode_cpu.cpp",)
CXX_FLAGS = ["-O3", "-ffp-contract=off"]
LDFLAGS = ["-ljpeg"]
HEADER_DIRS = ("/usr/include", "/usr/local/include", "/opt/homebrew/include", "/usr/local/opt/jpeg-turbo/include")

_lock = threading.Lock()
_module = None
_error: ExtensionUnavailable | None = None


def _check_libjpeg() -> None:
    extra = [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p]
    if not any(Path(d, "jpeglib.h").exists() for d in (*extra, *HEADER_DIRS)):
        raise ExtensionUnavailable(
            "the libjpeg-turbo headers (jpeglib.h) are not installed",
            "install them (Debian/Ubuntu: apt install libjpeg62-turbo-dev or libjpeg-turbo8-dev; conda: "
            "conda install libjpeg-turbo), or use the reference decoder (--set stream_decoder=reference)")


def build(build_dir: str | Path | None = None, *, verbose: bool = False):
    """Compile (or reuse the cached build) and import the decoder; raises ExtensionUnavailable."""
    _check_libjpeg()
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns that no CUDA runtime is found: this build needs none
    try:
        import torch.utils.cpp_extension as cpp
    finally:
        logger.setLevel(level)

    out = Path(build_dir) if build_dir is not None else cache_dir() / "jpeg_cpu"
    return jit_build(cpp, "the CPU JPEG decoder", NAME, SOURCES, out, cflags=CXX_FLAGS, ldflags=LDFLAGS,
                     python_module=True, verbose=verbose,
                     hint="rerun with FASTTRAIN_EXT_VERBOSE=1 for the full compiler output, or use the reference "
                          "decoder")


def load():
    """The decoder module (built on first use); a failure is remembered, so the build is tried once."""
    global _module, _error
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise _error
        try:
            _module = build(verbose=os.environ.get("FASTTRAIN_EXT_VERBOSE") == "1")
        except ExtensionUnavailable as e:
            _error = e
            raise
        return _module


def available() -> bool:
    try:
        load()
        return True
    except ExtensionUnavailable:
        return False
