"""Reference batch augmentation in plain PyTorch: the ground truth for every fused implementation.

Contract (kernels in cuda_ext/ and the numba path implement exactly `apply`):

Inputs
  x       uint8 (N, H, W, C), contiguous (the tensor dataset's layout), on any device.
  labels  int64 (N,).
  params  `AugParams`, all randomness, drawn by `AugmentSampler.sample`:
    offset    int32 (N, 2)  (dy, dx) in [0, 2*pad]. Output pixel (i, j) reads source row i + dy - pad and
                            column j' + dx - pad, where j' = W-1-j if flip else j (crop, then flip).
    flip      bool  (N,)       drawn at random per sample, or alternating: a fixed random bit per dataset
                            sample (a hash of its index and the seed) XOR the epoch's parity, so every
                            image is seen flipped every other epoch (airbench's alternating flip)
    cutout    int32 (N, 4)  (y0, x0, y1, x1), half-open box in output coordinates set to 0.0 after
                            normalisation (the mean colour); an empty box means no cutout.
    mix_index int64 (N,)    partner sample for mixup/cutmix (a permutation of the batch).
    mix_lam   float32 (N,)  weight of the sample's own pixels in the mixup blend; 1.0 means no blend.
    cutmix    int32 (N, 4)  (y0, x0, y1, x1) box whose pixels come from the partner; empty means none.
  pad, pad_mode  crop padding and 'reflect' (torch's reflect: no edge repeat) or 'zero' (pixel value 0).
  scale, bias    float32 (C,): normalised value = float(v) * scale[c] + bias[c], the product and the sum
                 each rounded to fp32 (no fused multiply-add), with scale = 1/(255 std), bias = -mean/std.

Per output element (n, i, j, c), with pix(k) the augmented, normalised value of sample k at (i, j, c):
    pix(k) = 0.0 if (i, j) in cutout[k] else normalise(x[k, src(i, j)] or 0 outside a zero pad)
    out    = pix(m)                                   if (i, j) in cutmix[n], m = mix_index[n]
           = pix(n) * lam + pix(m) * (1 - lam)        otherwise, lam = mix_lam[n] (fp32, no FMA)
then one cast to the output dtype (round to nearest even). Output: (N, C, H, W) in channels_last memory
layout (i.e. NHWC storage), dtype float32, bfloat16 or float16.

Targets: y_a = labels, y_b = labels[mix_index], lam = mix_lam * (1 - cutmix_area / (H W)), the share of
the sample's own pixels; loss = lam * CE(y_a) + (1 - lam) * CE(y_b). Without mixing y_b = y_a, lam = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PAD_MODES = ("reflect", "zero")


@dataclass
class AugmentConfig:
    """What to apply. Sizes are in pixels; probabilities per batch unless stated."""

    crop_pad: int = 4  # random crop from a padded image (the "translate" of airbench); 0 disables
    pad_mode: str = "reflect"  # 'reflect' or 'zero'
    flip: bool = True  # random horizontal flip, p = 0.5 per sample
    alternating_flip: bool = False  # flip = fixed random bit per sample XOR epoch parity (needs sample keys)
    cutout: int = 0  # side of the cutout square; 0 disables
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) blend weight; 0 disables
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) kept area; 0 disables
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both mixup and cutmix on: probability a mixed batch uses cutmix

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        for name in ("crop_pad", "cutout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def mixes(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


@dataclass
class AugParams:
    """Per-sample parameters of one batch (see the module docstring for each field's meaning)."""

    offset: torch.Tensor
    flip: torch.Tensor
    cutout: torch.Tensor
    mix_index: torch.Tensor
    mix_lam: torch.Tensor
    cutmix: torch.Tensor
    pad: int = 0
    pad_mode: str = "reflect"
    # Static hints so implementations can skip whole passes; they never change the result.
    has_cutout: bool = field(default=True)
    has_mix: bool = field(default=True)

    def to(self, device: torch.device | str) -> AugParams:
        kw = {k: getattr(self, k).to(device) for k in ("offset", "flip", "cutout", "mix_index", "mix_lam", "cutmix")}
        return AugParams(**kw, pad=self.pad, pad_mode=self.pad_mode, has_cutout=self.has_cutout, has_mix=self.has_mix)

    def take(self, rows: torch.Tensor) -> AugParams:
        """The parameters of the given rows of the batch (a DDP rank's slice). `mix_index` keeps pointing at
        rows of the whole batch: the caller remaps it to the rows it took."""
        kw = {k: getattr(self, k).index_select(0, rows)
              for k in ("offset", "flip", "cutout", "mix_index", "mix_lam", "cutmix")}
        return AugParams(**kw, pad=self.pad, pad_mode=self.pad_mode, has_cutout=self.has_cutout, has_mix=self.has_mix)


@dataclass
class Targets:
    y_a: torch.Tensor  # int64 (N,)
    y_b: torch.Tensor  # int64 (N,)
    lam: torch.Tensor  # float32 (N,), weight of y_a


def identity_params(n: int, device: torch.device | str = "cpu") -> AugParams:
    """Parameters that leave every image untouched (only normalisation happens)."""
    z4 = torch.zeros(n, 4, dtype=torch.int32, device=device)
    return AugParams(
        offset=torch.zeros(n, 2, dtype=torch.int32, device=device),
        flip=torch.zeros(n, dtype=torch.bool, device=device),
        cutout=z4,
        mix_index=torch.arange(n, device=device),
        mix_lam=torch.ones(n, dtype=torch.float32, device=device),
        cutmix=z4.clone(),
        pad=0,
        has_cutout=False,
        has_mix=False,
    )


def _random_boxes(n: int, h: int, w: int, bh: torch.Tensor, bw: torch.Tensor, gen: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Boxes of (bh, bw) centred uniformly in the image and clipped to it, as int32 (N, 4)."""
    cy = torch.randint(0, h, (n,), generator=gen, device=device)
    cx = torch.randint(0, w, (n,), generator=gen, device=device)
    y0 = (cy - bh // 2).clamp(0, h)
    x0 = (cx - bw // 2).clamp(0, w)
    y1 = (cy - bh // 2 + bh).clamp(0, h)
    x1 = (cx - bw // 2 + bw).clamp(0, w)
    return torch.stack([y0, x0, y1, x1], 1).to(torch.int32)


class AugmentSampler:
    """Draws `AugParams` for a batch. Per-sample randomness comes from a torch generator on the batch's
    device (no host sync); per-batch choices (mix or not, Beta draws) from a numpy generator on the host."""

    def __init__(self, cfg: AugmentConfig, seed: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.seed = seed
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return {"torch": self.gen.get_state(), "numpy": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["torch"])
        self.rng.bit_generator.state = state["numpy"]

    def sample(self, n: int, h: int, w: int, *, mix: bool = True, keys: torch.Tensor | None = None,
               epoch: int = 0) -> AugParams:
        """`mix=False` turns mixup/cutmix off for this batch (e.g. after the epoch they stop). `keys` (the
        batch's dataset indices) and `epoch` drive the alternating flip."""
        cfg, gen, dev = self.cfg, self.gen, self.device
        if cfg.flip and cfg.alternating_flip and (keys is None or len(keys) != n):
            raise ValueError("alternating flip needs the batch's dataset indices (keys) from the pipeline")
        pad = cfg.crop_pad
        if pad >= min(h, w) and cfg.pad_mode == "reflect":
            raise ValueError(f"crop_pad {pad} must be smaller than the image ({h}x{w}) for reflect padding")
        offset = (torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, device=dev, dtype=torch.int32)
                  if pad else torch.zeros(n, 2, dtype=torch.int32, device=dev))
        if not cfg.flip:
            flip = torch.zeros(n, dtype=torch.bool, device=dev)
        elif cfg.alternating_flip:
            flip = alternating_flip_bits(keys.to(dev), self.seed, epoch)
        else:
            flip = torch.rand(n, generator=gen, device=dev) < 0.5
        empty = torch.zeros(n, 4, dtype=torch.int32, device=dev)
        if cfg.cutout:
            side = torch.full((n,), cfg.cutout, device=dev)
            cutout = _random_boxes(n, h, w, side, side, gen, dev)
        else:
            cutout = empty
        mix_index = torch.arange(n, device=dev)
        mix_lam = torch.ones(n, dtype=torch.float32, device=dev)
        cutmix = empty.clone()
        has_mix = False
        if mix and cfg.mixes and self.rng.random() < cfg.mix_prob:
            use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or self.rng.random() < cfg.switch_prob)
            mix_index = torch.randperm(n, generator=gen, device=dev)
            has_mix = True
            if use_cutmix:
                lam = float(self.rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
                cut = float(np.sqrt(1.0 - lam))
                bh = torch.full((n,), int(h * cut), device=dev)
                bw = torch.full((n,), int(w * cut), device=dev)
                cutmix = _random_boxes(n, h, w, bh, bw, gen, dev)
            else:
                lam = float(self.rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                mix_lam = torch.full((n,), lam, dtype=torch.float32, device=dev)
        return AugParams(offset, flip, cutout, mix_index, mix_lam, cutmix, pad=pad, pad_mode=cfg.pad_mode,
                         has_cutout=bool(cfg.cutout), has_mix=has_mix)


def alternating_flip_bits(keys: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """bool (N,): a fixed pseudo-random bit per dataset index (a 32-bit integer hash of index and seed),
    inverted on odd epochs. Stateless, so it needs no table, survives resume and agrees on every rank."""
    h = (keys.to(torch.int64) ^ ((seed * 0x9E3779B9) & 0xFFFFFFFF)) & 0xFFFFFFFF
    for _ in range(2):  # two rounds of a murmur-style finaliser: well mixed low bits
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return ((h & 1) == 1) ^ bool(epoch % 2)


def _box_mask(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool (N, H, W): True inside each half-open box (y0, x0, y1, x1)."""
    i = torch.arange(h, device=box.device)
    j = torch.arange(w, device=box.device)
    rows = (i[None, :] >= box[:, 0:1]) & (i[None, :] < box[:, 2:3])
    cols = (j[None, :] >= box[:, 1:2]) & (j[None, :] < box[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx >= size, 2 * size - 2 - idx, idx)


def mix_targets(labels: torch.Tensor, params: AugParams, h: int, w: int) -> Targets:
    box = params.cutmix.to(torch.float32)
    area = (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)
    lam = params.mix_lam * (1.0 - area / float(h * w))
    return Targets(labels, labels[params.mix_index], lam)


def check_inputs(x: torch.Tensor, params: AugParams, scale: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"images must be 4-d uint8 (N, H, W, C); got {x.dim()}-d shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C); got dtype {x.dtype}")
    n, h, w, c = x.shape
    if params.offset.shape != (n, 2):
        raise ValueError(f"params.offset must have shape ({n}, 2), got {tuple(params.offset.shape)}")
    if scale.shape != (c,) or bias.shape != (c,):
        raise ValueError(f"scale and bias must have shape ({c},), got {tuple(scale.shape)}, {tuple(bias.shape)}")
    if params.pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {params.pad_mode!r}")
    if params.pad_mode == "reflect" and params.pad >= min(h, w):
        raise ValueError(f"reflect pad {params.pad} must be smaller than the image ({h}x{w})")


def apply(
    x: torch.Tensor,
    labels: torch.Tensor,
    params: AugParams,
    scale: torch.Tensor,
    bias: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, Targets]:
    """Deterministic: the augmented, normalised batch (N, C, H, W) channels_last, and its targets."""
    check_inputs(x, params, scale, bias)
    n, h, w, c = x.shape
    dev = x.device
    pad = params.pad
    # --- crop (translate) + flip as one gather of source rows/columns per sample
    i = torch.arange(h, device=dev)
    j = torch.arange(w, device=dev)
    dy = params.offset[:, 0:1].long()
    dx = params.offset[:, 1:2].long()
    rows = i[None, :] + dy - pad  # (N, H)
    jj = torch.where(params.flip[:, None], (w - 1 - j)[None, :], j[None, :])
    cols = jj + dx - pad  # (N, W)
    if params.pad_mode == "reflect":
        rows, cols, valid = _reflect(rows, h), _reflect(cols, w), None
    else:
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    # always the gather (the identity when nothing moves): asking whether any image flips would make
    # the host wait for the device on every batch
    nidx = torch.arange(n, device=dev)[:, None, None]
    gathered = x[nidx, rows[:, :, None], cols[:, None, :]]  # uint8 (N, H, W, C)
    # --- normalise: product and sum as two separately rounded fp32 ops
    f = gathered.to(torch.float32) * scale.to(dev, torch.float32)
    f = f + bias.to(dev, torch.float32)
    if valid is not None:  # zero padding: pixel value 0 normalises to exactly bias[c]
        f = torch.where(valid[..., None], f, bias.to(dev, torch.float32))
    # --- cutout, in output coordinates, after normalisation
    if params.has_cutout:
        f = f.masked_fill(_box_mask(params.cutout, h, w)[..., None], 0.0)
    # --- mixup blend, then cutmix paste, both with the partner's augmented pixels
    if params.has_mix:
        partner = f[params.mix_index]
        lam = params.mix_lam.to(torch.float32)[:, None, None, None]
        blended = f * lam + partner * (1.0 - lam)
        f = torch.where(_box_mask(params.cutmix, h, w)[..., None], partner, blended)
    out = f.to(out_dtype).permute(0, 3, 1, 2)  # NCHW view of NHWC storage = channels_last
    return out, mix_targets(labels, params, h, w)


def normalize(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Evaluation path: uint8 NHWC -> normalised (N, C, H, W) channels_last, no augmentation."""
    f = x.to(torch.float32) * scale.to(x.device, torch.float32) + bias.to(x.device, torch.float32)
    return f.to(out_dtype).permute(0, 3, 1, 2)


def norm_constants(mean: list[float], std: list[float], device: torch.device | str = "cpu"):
    """(scale, bias) fp32 tensors such that float(v) * scale + bias == (v / 255 - mean) / std."""
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).to(device)
    bias = (-mean_t / std_t).to(torch.float32).to(device)
    return scale, bias
