"""Photo augmentations on the device, per image and batched: RandAugment, TrivialAugmentWide, colour jitter
and random erasing, with torchvision.transforms.v2's semantics, on a uint8 (N, H, W, C) batch.

Two steps, as the fused op: `PhotoAugment.sample` draws every image's parameters on the host (`PhotoParams`,
numpy), `apply_photo` applies them on the batch's device. The draws are counter-based (the splitmix64 hashes of
fasttrain/data/crops.py): an image's parameters are a pure function of (seed, epoch, key), where the key is its
dataset index when the pipeline says which samples a batch holds on the host (the stream pipeline; the
tensor pipeline on a CPU), else its (batch number, position) in the epoch (pipelines whose batches are a pure
function of (seed, epoch, batch) all the same). Nothing depends on decode workers, timing or a resume.

`apply_photo` groups the batch by operation: for each of the policy's `num_ops` slots, each op runs once on
the images that drew it (their own magnitudes as per-image tensors), so the Python loop is over at most 14
ops, never over images. Each op is torchvision's formula on a batch:
  - parameter-free ops (AutoContrast, Equalize) and the per-pixel HSV conversion of the hue shift are
    torchvision's own functions, called on the group;
  - brightness, saturation, contrast, sharpness, posterize and solarize repeat torchvision's tensor code with a
    per-image factor in place of its Python scalar;
  - shear, translate and rotate build each image's inverse affine matrix with torchvision's own
    `_get_inverse_affine_matrix` (once per distinct magnitude: the policies' magnitudes are binned) and sample
    all of them in one `grid_sample` (nearest, zero fill), as `F.affine` / `F.rotate` do for one image;
    rotations by exact multiples of 90 degrees take torchvision's `rot90` fast path.
torchvision blends with `add_(other, alpha=1 - r)`, a fused multiply-add; `addcmul` with a per-image tensor is
the same operation, so the results equal torchvision's per-image calls bit for bit (tests/test_photo_augment.py;
the only float reductions, contrast's mean and sharpness's 3x3 convolution, may differ in their last bit
between one image and a batch on some CPUs, which the tests allow as 1 level on a few pixels).

The order within an image is torchvision's usual one: policy, then colour jitter (in its own random order of
the four adjustments, as ColorJitter), then random erasing. Erased pixels take `fill` (per channel), by
default the caller's choice; the trainer passes the dataset's mean colour so that erasing before
normalisation equals torchvision's RandomErasing(value=0) after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import RandAugment, TrivialAugmentWide
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_grayscale_image, _rgb_to_hsv
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

from ..data.crops import uniforms
from .photo_config import PhotoConfig

# torchvision's search spaces (op name -> (magnitudes(num_bins, height, width), signed)): used as they are, so
# the ops, their order and their magnitude bins are torchvision's by construction.
SPACES = {"randaugment": RandAugment._AUGMENTATION_SPACE, "trivialaugment": TrivialAugmentWide._AUGMENTATION_SPACE}
JITTER = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx 0..3
ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10  # RandomErasing's defaults
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# Stream constants of the counter-based draws: each feature its own, so turning one on changes no other's draws.
_POLICY_STREAM, _JITTER_STREAM, _ERASE_STREAM = np.uint64(0x504F4C49), np.uint64(0x4A495454), np.uint64(0x45524153)
CPU_CHUNK_VALUES = 1 << 20  # pixel values per op call on a CPU (4 MB as float32; see _update)
_BATCH_KEY = 1 << 40  # keys of images without a dataset index: batch * 2^40 + position (no dataset is that big)


@dataclass
class PhotoParams:
    """Per-image parameters of one batch (host arrays; N images)."""

    ops: np.ndarray  # int64 (N, slots): index into the policy's op names
    magnitudes: np.ndarray  # float64 (N, slots): the signed magnitude torchvision's policy passes to the op
    jitter_order: np.ndarray  # int64 (N, 4): ColorJitter's fn_idx (a permutation of 0..3)
    jitter: np.ndarray  # float64 (N, 4): brightness, contrast, saturation and hue factors (NaN: off)
    erase: np.ndarray  # int64 (N, 4): (top, left, height, width) of the erased box; height 0: none


class PhotoAugment:
    """Draws (`sample`) and applies (`__call__`) the configured photo augmentations to uint8 NHWC batches."""

    def __init__(self, cfg: PhotoConfig, seed: int, *, batch_seed: int | None = None,
                 fill: tuple[int, ...] = (0, 0, 0)):
        """`seed` keys draws by dataset index; `batch_seed` (default: seed) those by (batch, position), which
        under DDP must differ between ranks that draw their own batches."""
        self.cfg = cfg
        self.seed = seed
        self.batch_seed = seed if batch_seed is None else batch_seed
        self.fill = tuple(int(v) for v in fill)
        self.names = tuple(SPACES[cfg.auto_augment]) if cfg.slots else ()

    def keys(self, n: int, ids: np.ndarray | torch.Tensor | None, batch: int) -> tuple[np.ndarray, int]:
        """(the images' draw keys, their seed): their dataset indices when the pipeline has them on the host
        (reading a device tensor would make the host wait for the device every batch), else their
        (batch, position) in the epoch."""
        if ids is not None and (not isinstance(ids, torch.Tensor) or ids.device.type == "cpu"):
            ids = np.asarray(ids, dtype=np.int64)
            if ids.shape == (n,):
                return ids, self.seed
        return -(batch * _BATCH_KEY + np.arange(n, dtype=np.int64)) - 1, self.batch_seed  # never a dataset index

    def sample(self, n: int, h: int, w: int, keys: np.ndarray, epoch: int, seed: int | None = None) -> PhotoParams:
        """Every image's parameters for an n x h x w batch, a pure function of (seed, epoch, key)."""
        cfg, k = self.cfg, self.cfg.slots
        seed = self.seed if seed is None else seed
        ops = np.zeros((n, k), dtype=np.int64)
        mags = np.zeros((n, k), dtype=np.float64)
        if k:
            u = uniforms(keys, seed, epoch, 3 * k, _POLICY_STREAM)
            space = list(SPACES[cfg.auto_augment].values())
            table = magnitude_table(cfg.auto_augment, cfg.num_bins, h, w)  # (ops, bins), NaN: no magnitude
            for slot in range(k):  # torchvision: op uniform, then the bin (fixed, or uniform), then the sign
                ops[:, slot] = np.minimum((u[:, 3 * slot] * len(space)).astype(np.int64), len(space) - 1)
                bins = (np.full(n, cfg.magnitude) if cfg.auto_augment == "randaugment"
                        else np.minimum((u[:, 3 * slot + 1] * cfg.num_bins).astype(np.int64), cfg.num_bins - 1))
                m = table[ops[:, slot], bins]
                signed = np.array([s for _, s in space])[ops[:, slot]]
                m = np.where(signed & (u[:, 3 * slot + 2] < 0.5), -m, m)
                mags[:, slot] = np.nan_to_num(m, nan=0.0)
        order = np.tile(np.arange(4), (n, 1))
        jitter = np.full((n, 4), np.nan)
        if any(cfg.color_jitter):
            u = uniforms(keys, seed, epoch, 8, _JITTER_STREAM)
            order = np.argsort(u[:, :4], axis=1, kind="stable")  # a uniform random permutation, as randperm(4)
            for j, lim in enumerate(cfg.jitter_ranges()):
                if lim is not None:  # torchvision draws a float32: the same rounding here
                    jitter[:, j] = (lim[0] + (lim[1] - lim[0]) * u[:, 4 + j]).astype(np.float32)
        erase = np.zeros((n, 4), dtype=np.int64)
        if cfg.random_erasing > 0:
            erase = erase_boxes(uniforms(keys, seed, epoch, 2 * ERASE_TRIES + 3, _ERASE_STREAM), h, w,
                                cfg.random_erasing)
        return PhotoParams(ops, mags, order, jitter, erase)

    def __call__(self, x: torch.Tensor, *, ids=None, epoch: int = 0, batch: int = 0) -> torch.Tensor:
        """The augmented copy of uint8 `x` (N, H, W, C), NHWC-contiguous, on x's device."""
        if not self.cfg.active:
            return x
        keys, seed = self.keys(len(x), ids, batch)
        params = self.sample(len(x), x.shape[1], x.shape[2], keys, epoch, seed)
        return apply_photo(x, params, self.names, self.fill)


def magnitude_table(policy: str, num_bins: int, h: int, w: int) -> np.ndarray:
    """float64 (ops, bins): torchvision's magnitude of each op at each bin for an h x w image (NaN: none).
    float(magnitudes[bin]) exactly as the policy's forward reads it (a float32 value)."""
    rows = []
    for fn, _ in SPACES[policy].values():
        m = fn(num_bins, h, w)
        rows.append(np.full(num_bins, np.nan) if m is None else np.array([float(v) for v in m]))
    return np.stack(rows)


def erase_boxes(u: np.ndarray, h: int, w: int, p: float) -> np.ndarray:
    """int64 (N, 4) boxes (top, left, height, width), RandomErasing.make_params's draw: up to 10 tries of an
    area in ERASE_SCALE of the image and a log-uniform aspect ratio in ERASE_RATIO; the first box strictly
    smaller than the image is placed uniformly; none fits (or the image is not chosen, p): height 0."""
    area = float(h * w)
    t = ERASE_TRIES
    target = area * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[:, 1 : 1 + t])
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = np.exp(lo + (hi - lo) * u[:, 1 + t : 1 + 2 * t])
    bh = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # int(round(.)): half to even, as Python's round
    bw = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (bh < h) & (bw < w)
    first = np.argmax(fits, axis=1)
    rows = np.arange(len(u))
    bh, bw = bh[rows, first], bw[rows, first]
    top = np.floor(u[:, 1 + 2 * t] * (h - bh + 1)).astype(np.int64)  # randint(0, h - bh + 1)
    left = np.floor(u[:, 2 + 2 * t] * (w - bw + 1)).astype(np.int64)
    on = (u[:, 0] < p) & fits.any(axis=1)
    return np.where(on[:, None], np.stack([top, left, bh, bw], axis=1), 0)


# ============================================================================ applying the parameters
def apply_photo(x: torch.Tensor, params: PhotoParams, names: tuple[str, ...] = (),
                fill: tuple[int, ...] = (0, 0, 0)) -> torch.Tensor:
    """uint8 (N, H, W, C) -> the augmented batch, NHWC-contiguous (a new tensor; x is not modified)."""
    if x.dim() != 4 or x.dtype != torch.uint8 or x.shape[-1] != 3:
        raise ValueError(f"photo augmentations take uint8 (N, H, W, 3) batches, got {x.dtype} {tuple(x.shape)}")
    # NCHW views of NHWC storage (channels_last): torchvision's layout, no copy
    out = x.permute(0, 3, 1, 2).clone(memory_format=torch.channels_last)
    for slot in range(params.ops.shape[1]):
        for op, rows in _groups(params.ops[:, slot], len(names)):
            if names[op] != "Identity":
                _update(out, rows, lambda g, r, n=names[op], s=slot: POLICY_OPS[n](g, params.magnitudes[r, s]))
    if not np.isnan(params.jitter).all():
        for slot in range(4):
            for fn, rows in _groups(params.jitter_order[:, slot], 4):
                rows = rows[~np.isnan(params.jitter[rows, fn])]
                if len(rows):
                    _update(out, rows, lambda g, r, f=fn: JITTER_OPS[f](g, params.jitter[r, f]))
    rows = np.flatnonzero(params.erase[:, 2] > 0)
    if len(rows):
        _update(out, rows, lambda g, r: erase(g, params.erase[r], fill))
    return out.permute(0, 2, 3, 1)


def _groups(labels: np.ndarray, count: int):
    """(value, rows holding it) for each value in 0..count-1 that occurs."""
    for v in range(count):
        rows = np.flatnonzero(labels == v)
        if len(rows):
            yield v, rows


def _update(out: torch.Tensor, rows: np.ndarray, fn) -> None:
    """out[rows] = fn(out[rows], rows). On a CPU in chunks of about CPU_CHUNK_VALUES values (6 images at 224 px,
    a whole CIFAR batch): the float intermediates of a whole 224 px batch (150 MB each) would stream through
    memory and be page-faulted in afresh on every allocation (measured 3x slower than torchvision image by
    image); a chunk's stay in the caches. A GPU takes the whole group at once."""
    step = max(1, CPU_CHUNK_VALUES // out[0].numel()) if out.device.type == "cpu" else len(rows)
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        if len(part) == len(out):  # every image: no gather
            out.copy_(fn(out, part))
            continue
        idx = torch.from_numpy(part).to(out.device, non_blocking=True)
        out.index_copy_(0, idx, fn(out.index_select(0, idx), part))


def _per_image(values: np.ndarray, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """A host array of one value per image as an (n, 1, 1, 1) tensor beside x."""
    return torch.as_tensor(np.asarray(values), dtype=dtype).to(x.device, non_blocking=True).view(-1, 1, 1, 1)


# ---------------------------------------------------------------- colour (torchvision's _color.py, per image)
def _blend(x: torch.Tensor, other: torch.Tensor, ratio: np.ndarray) -> torch.Tensor:
    """_blend: x * r + other * (1 - r), clamped, truncated to uint8; 1 - r in float64 first, as Python does.
    addcmul is torchvision's add_(other, alpha=1 - r) with a tensor alpha: the same fused multiply-add."""
    r, rest = _per_image(ratio, x), _per_image(1.0 - ratio, x)
    return torch.addcmul(x.mul(r), other, rest).clamp_(0, 255).to(torch.uint8)


def brightness(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return x.mul(_per_image(factor, x)).clamp_(0, 255).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return _rgb_to_grayscale_image(x, num_output_channels=1, preserve_dtype=False).floor_()


def saturation(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def contrast(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return _blend(x, torch.mean(_gray(x), dim=(-3, -2, -1), keepdim=True), factor)


def sharpness(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32, device=x.device)
    out = x.to(torch.float32, copy=True)
    blurred = nnf.conv2d(out, kernel.expand(3, 1, 3, 3), groups=3).round_()
    view = out[..., 1:-1, 1:-1]  # the border keeps its pixels, as torchvision's
    view.addcmul_(blurred.sub_(view), _per_image(1.0 - factor, x))  # add_(alpha=1 - r), per image
    return out.clamp_(0, 255).to(torch.uint8)


def hue(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    """adjust_hue: to HSV, shift the hue (mod 1), back to RGB; torchvision's own conversions."""
    hsv = _rgb_to_hsv(F.to_dtype(x, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(_per_image(factor, x).view(-1, 1, 1)).remainder_(1.0)
    return F.to_dtype(_hsv_to_rgb(torch.stack((h, s, v), dim=-3)), torch.uint8, scale=True)


def posterize(x: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    bits = bits.astype(np.int64)
    mask = np.where(bits >= 8, 255, ((1 << bits) - 1) << (8 - np.minimum(bits, 8)))
    return x & _per_image(mask, x, torch.uint8)


def solarize(x: torch.Tensor, magnitude: np.ndarray) -> torch.Tensor:
    threshold = _per_image(255.0 * magnitude, x)  # the policy's bound * magnitude
    return torch.where(x >= threshold, 255 - x, x)


# ---------------------------------------------------------------- geometry (F.affine / F.rotate, nearest, no fill)
def _matrix(name: str, m: float, h: int, w: int) -> list[float]:
    """The inverse affine matrix torchvision's policy op `name` builds for magnitude m on an h x w image."""
    if name == "Rotate":  # F.rotate: angle % 360, centre of the image, -angle
        return _get_inverse_affine_matrix([0.0, 0.0], -(m % 360), [0.0, 0.0], 1.0, [0.0, 0.0])
    if name in ("ShearX", "ShearY"):  # F.affine(shear=degrees(atan(m)), center=[0, 0])
        shear = [math.degrees(math.atan(m)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(m))]
        return _get_inverse_affine_matrix([-w * 0.5, -h * 0.5], 0.0, [0.0, 0.0], 1.0, shear)
    t = [float(int(m)), 0.0] if name == "TranslateX" else [0.0, float(int(m))]  # int(): toward zero
    return _get_inverse_affine_matrix([0.0, 0.0], 0.0, t, 1.0, [0.0, 0.0])


def affine(x: torch.Tensor, name: str, magnitude: np.ndarray) -> torch.Tensor:
    """Policy op `name` with each image's magnitude: one nearest grid_sample with a matrix per image
    (torchvision's _affine_grid, batched), zeros outside, rounded back to uint8."""
    n, _, h, w = x.shape
    if name == "Rotate":  # torchvision's exact fast paths: rot90 for multiples of 90 degrees
        angle = magnitude % 360
        fast = {0.0: 0, 180.0: 2} | ({90.0: 1, 270.0: 3} if h == w else {})
        k = np.array([fast.get(float(a), -1) for a in angle])
        if (k >= 0).any():
            out = torch.empty_like(x)
            for turns in np.unique(k):
                rows = np.flatnonzero(k == turns)
                idx = torch.from_numpy(rows).to(x.device)
                sub = x.index_select(0, idx)
                res = (sub.clone() if turns == 0 else torch.rot90(sub, k=int(turns), dims=(-2, -1)) if turns > 0
                       else affine(sub, name, magnitude[rows]))
                out.index_copy_(0, idx, res)
            return out
    values, inverse = np.unique(magnitude, return_inverse=True)  # binned magnitudes: few distinct matrices
    table = torch.tensor([_matrix(name, float(v), h, w) for v in values], dtype=torch.float32)
    theta = table[torch.from_numpy(inverse.reshape(-1))].view(n, 2, 3).to(x.device)
    grid = _affine_grids(theta, h, w)
    out = nnf.grid_sample(x.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _affine_grids(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision's _affine_grid for a matrix per image: (n, h, w, 2) sampling positions."""
    dev = theta.device
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=dev))
    return base.view(1, h * w, 3).expand(len(theta), -1, -1).bmm(rescaled).view(-1, h, w, 2)


def erase(x: torch.Tensor, boxes: np.ndarray, fill: tuple[int, ...]) -> torch.Tensor:
    """F.erase per image: the box (top, left, height, width) set to the fill colour."""
    t, le, bh, bw = (torch.as_tensor(boxes[:, i]).to(x.device).view(-1, 1) for i in range(4))
    i = torch.arange(x.shape[-2], device=x.device)
    j = torch.arange(x.shape[-1], device=x.device)
    inside = (((i >= t) & (i < t + bh))[:, :, None] & ((j >= le) & (j < le + bw))[:, None, :])[:, None]
    colour = torch.tensor(fill, dtype=torch.uint8, device=x.device).view(1, -1, 1, 1)
    return torch.where(inside, colour, x)


POLICY_OPS = {
    "ShearX": lambda x, m: affine(x, "ShearX", m), "ShearY": lambda x, m: affine(x, "ShearY", m),
    "TranslateX": lambda x, m: affine(x, "TranslateX", m), "TranslateY": lambda x, m: affine(x, "TranslateY", m),
    "Rotate": lambda x, m: affine(x, "Rotate", m),
    "Brightness": lambda x, m: brightness(x, 1.0 + m), "Color": lambda x, m: saturation(x, 1.0 + m),
    "Contrast": lambda x, m: contrast(x, 1.0 + m), "Sharpness": lambda x, m: sharpness(x, 1.0 + m),
    "Posterize": posterize, "Solarize": solarize,
    "AutoContrast": lambda x, m: F.autocontrast(x), "Equalize": lambda x, m: F.equalize(x),
}
JITTER_OPS = (brightness, contrast, saturation, hue)  # ColorJitter's fn_idx order
