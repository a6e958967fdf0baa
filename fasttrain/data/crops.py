"""Random-resized-crop boxes and flips drawn from a counter-based generator: a sample's crop is a pure
function of (seed, epoch, sample index in the dataset), never of the batch, the worker count or timing.

The semantics are torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a target area drawn
uniformly in `scale` * area and a log-uniform aspect ratio in `ratio`; w = round(sqrt(area * ratio)),
h = round(sqrt(area / ratio)) (round half to even, as Python's round); the first try that fits gives the box,
placed uniformly at an integer position; when none fits, the centre crop of the whole image with its
aspect ratio clamped to `ratio`. The random numbers are splitmix64 hashes of the key instead of a
stateful generator, so the whole batch is drawn at once with numpy and any sample can be drawn alone
(a resume, another rank, another worker count: the same box).

Boxes are (top, left, height, width) int64 arrays in the stored image's pixels, as `get_params` returns.
`centre_crop_box` is the evaluation box: resize the shorter side to out_res / ratio, centre crop out_res,
expressed as the equivalent integer box in source pixels (as FFCV's centre-crop decoder does).
"""

from __future__ import annotations

import numpy as np

TRIES = 10  # torchvision's number of attempts before the centre-crop fallback
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
# Stream constants separating the crop draws from the flip draws of the same (seed, epoch, sample).
_CROP_STREAM = np.uint64(0x43524F50)  # "CROP"
_FLIP_STREAM = np.uint64(0x464C4950)  # "FLIP"


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose output bits each depend on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MUL1
    x = x ^ (x >> np.uint64(27))
    x = x * _MUL2
    return x ^ (x >> np.uint64(31))


def _keys(sample_ids, seed: int, epoch: int, stream: np.uint64) -> np.ndarray:
    """One uint64 key per sample: the hash chain of (seed, epoch, stream, sample)."""
    ids = np.asarray(sample_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        head = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        head = _mix(head ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
        head = _mix(head ^ stream)
        return _mix(head ^ ids)


def uniforms(sample_ids, seed: int, epoch: int, n: int, stream: np.uint64 = _CROP_STREAM) -> np.ndarray:
    """float64 [len(sample_ids), n] uniform in [0, 1): draw k of sample s is a hash of (key(s), k)."""
    keys = _keys(sample_ids, seed, epoch, stream)
    counters = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
    with np.errstate(over="ignore"):
        bits = _mix(keys[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rrc_params(heights, widths, sample_ids, seed: int, epoch: int, scale=(0.08, 1.0),
               ratio=(3 / 4, 4 / 3)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, crop_h, crop_w) int64 arrays: torchvision's RandomResizedCrop boxes for images of
    `heights` x `widths`, keyed by (seed, epoch, sample id)."""
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    if heights.shape != widths.shape or heights.shape != np.shape(sample_ids):
        raise ValueError(f"heights, widths and sample_ids must have one shape, got {heights.shape}, "
                         f"{widths.shape}, {np.shape(sample_ids)}")
    if heights.size and (heights.min() < 1 or widths.min() < 1):
        raise ValueError("image sizes must be >= 1 pixel")
    u = uniforms(sample_ids, seed, epoch, 2 * TRIES + 2)
    area = (heights * widths).astype(np.float64)[:, None]
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:TRIES])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, TRIES : 2 * TRIES])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # rint: half to even, as Python's round
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = np.argmax(fits, axis=1)  # the first try that fits (0 when none: masked below)
    found = fits.any(axis=1)
    rows = np.arange(len(heights))
    crop_h, crop_w = h[rows, first], w[rows, first]
    # torchvision: randint(0, H - h + 1): an integer uniform over the free positions
    top = np.floor(u[:, 2 * TRIES] * (heights - crop_h + 1)).astype(np.int64)
    left = np.floor(u[:, 2 * TRIES + 1] * (widths - crop_w + 1)).astype(np.int64)
    # fallback: the whole image, its aspect ratio clamped to `ratio`, centred
    in_ratio = widths / heights
    fb_w = np.where(in_ratio < min(ratio), widths,
                    np.where(in_ratio > max(ratio), np.rint(heights * max(ratio)).astype(np.int64), widths))
    fb_h = np.where(in_ratio < min(ratio), np.rint(widths / min(ratio)).astype(np.int64), heights)
    fb_top, fb_left = (heights - fb_h) // 2, (widths - fb_w) // 2
    return (np.where(found, top, fb_top), np.where(found, left, fb_left),
            np.where(found, crop_h, fb_h), np.where(found, crop_w, fb_w))


def flip_flags(sample_ids, seed: int, epoch: int) -> np.ndarray:
    """bool per sample: a horizontal flip with probability 1/2, keyed by (seed, epoch, sample id)."""
    return uniforms(sample_ids, seed, epoch, 1, _FLIP_STREAM)[:, 0] < 0.5


def centre_crop_box(heights, widths, out_res: int, ratio: float = 224 / 256
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, side, side) int64: resizing the shorter side to out_res / ratio and cropping the centre
    out_res x out_res square is (up to rounding) resizing this centred square of side
    round(min(h, w) * ratio) to out_res. `out_res` does not change the box; it is the caller's output size."""
    if not 0 < ratio <= 1:
        raise ValueError(f"eval crop ratio must lie in (0, 1], got {ratio}")
    if out_res < 1:
        raise ValueError(f"out_res must be >= 1, got {out_res}")
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    side = np.maximum(np.rint(np.minimum(heights, widths) * ratio).astype(np.int64), 1)
    return (heights - side) // 2, (widths - side) // 2, side, side
