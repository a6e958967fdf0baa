"""Image files to uint8 HWC RGB arrays, by one rule for every mode, in worker processes that die with
their parent.

The rule (also in docs/retrieval.md, "Decoding"):
- 8-bit RGB, L (grey), 1 (bi-level), YCbCr, CMYK (PIL's formula, no ICC profile): converted to RGB.
- 16-bit grey (I;16*, and I taken as 16-bit): scaled to 8 bits, v * 255 / 65535 rounded (never clipped);
  16-bit RGB(A) PNGs are read by PIL at 8 bits per channel already.
- Anything with alpha (RGBA, LA, PA, palette or grey/RGB with a transparency entry): composited on
  black, i.e. each channel times alpha / 255, rounded; fully transparent pixels become black.
- Floating-point images (F) are refused: their value range is unknown.
- A header announcing more than MAX_IMAGE_PIXELS pixels is refused by name before any pixel is decoded
  (PIL's decompression-bomb guard, set explicitly here and turned from a warning into an error).
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .archive import read_regular_file
from .errors import BadFile, SourceError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own default (about 9459 x 9459), set explicitly so no import changes it
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) of an opened PIL image, by the rule in this module's docstring."""
    if img.mode in _SIXTEEN_BIT:
        grey = np.rint(np.asarray(img, dtype=np.float64) * (255.0 / 65535.0))
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise ValueError("32-bit floating-point image (mode F): its value range is unknown; save it as 8 or 16 bit")
    if img.mode in _ALPHA or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        return ((rgba[..., :3] * rgba[..., 3:4] + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


@contextmanager
def decoding(name: str) -> Iterator[None]:
    """Decode images inside this block: a decompression bomb, an unreadable or truncated file becomes a
    SourceError naming `name` (the one error mapping of every decoder of the data layer)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        announced = re.search(r"\((\d+) pixels\)", str(e))  # PIL checks the header's size, before any decoding
        size = f"{int(announced[1]) / 1e6:.0f} megapixels" if announced else "too many pixels"
        raise SourceError(f"{name}: {size}, over the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit for one image: "
                          "refused as a possible decompression bomb, not decoded") from e
    except UnidentifiedImageError as e:
        raise SourceError(f"{name}: cannot decode image (not a recognised image format)") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise SourceError(f"{name}: cannot decode image ({e})") from e


def decode_image(data: bytes, name: str, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 HWC RGB; with `size`, resize the short side and centre-crop."""
    with decoding(name):
        with Image.open(io.BytesIO(data)) as img:
            rgb = to_rgb(img)
        if size is None:
            return rgb
        return np.asarray(_resize_center_crop(Image.fromarray(rgb), size), dtype=np.uint8)


# ----------------------------------------------------------------------------- worker processes
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: this worker is killed when the process that started it dies (even by kill -9).

    Linux: the kernel's parent-death signal (prctl); elsewhere a daemon thread that polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl in this libc: fall back to polling
            pass
        else:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _decode_chunk(args: tuple[list[tuple[str, bytes]], int | None, bool]) -> list[np.ndarray | BadFile]:
    items, size, skip_bad = args
    out: list[np.ndarray | BadFile] = []
    for name, data in items:
        try:
            out.append(decode_image(data, name, size))
        except SourceError as e:
            if not skip_bad:
                raise
            out.append(BadFile(name, str(e)))
    return out


def decode_many(
    items: list[tuple[str, bytes]],
    *,
    size: int | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = 512,
    skip_bad: bool = False,
) -> list[np.ndarray | BadFile]:
    """Decode (name, bytes) pairs in parallel processes, preserving order.

    A file that does not decode raises `SourceError` naming it; with `skip_bad` it comes back as a
    `BadFile` in its place instead (see `split_bad`), so the caller can drop it and record it.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    chunks = [(items[i : i + chunk], size, skip_bad) for i in range(0, len(items), chunk)]
    out: list[np.ndarray | BadFile] = []
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            out.extend(_decode_chunk(c))
            if progress:
                progress(len(c[0]))
        return out
    # fork: the workers' parent is this process, which is what their parent-death signal watches
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        for c, decoded in zip(chunks, pool.map(_decode_chunk, chunks)):
            out.extend(decoded)
            if progress:
                progress(len(c[0]))
    return out


def split_bad(decoded: list) -> tuple[list[np.ndarray], list[int], list[BadFile]]:
    """(images, indices of the items they came from, bad files) from `decode_many(..., skip_bad=True)`."""
    images, kept, bad = [], [], []
    for i, d in enumerate(decoded):
        if isinstance(d, BadFile):
            bad.append(d)
        else:
            images.append(d)
            kept.append(i)
    return images, kept, bad


def decode_image_file(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode an image file given by the user (`fasttrain predict`): a regular file under the size cap."""
    return decode_image(read_regular_file(Path(path)), str(path), size)
