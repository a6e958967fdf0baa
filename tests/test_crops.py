"""Counter-based RandomResizedCrop boxes and flips (fasttrain/data/crops.py).

1. The vectorised draw equals torchvision's get_params code run sample by sample on the same uniforms
   (the algorithm, exactly), and
2. its distribution matches torchvision's own get_params with torch's generator (two-sample KS tests on
   20k draws of scale, aspect ratio and position per image size; fallback and flip rates), and
3. a sample's box depends only on (seed, epoch, sample id): not on the batch it is drawn in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from fasttrain.data.crops import TRIES, centre_crop_box, flip_flags, rrc_params, uniforms

SIZES = [(224, 224), (375, 500), (900, 160), (64, 48), (160, 900)]
N = 20_000
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def get_params_from(u: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, line for line, with its random draws replaced by `u`
    (uniform area, uniform log-ratio per try; then the two position draws)."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for k in range(TRIES):
        target_area = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[k])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[TRIES + k])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(u[2 * TRIES] * (height - h + 1))
            j = int(u[2 * TRIES + 1] * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(RATIO):
        w = width
        h = int(round(w / min(RATIO)))
    elif in_ratio > max(RATIO):
        h = height
        w = int(round(h * max(RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width", SIZES)
def test_vectorised_draw_is_get_params_on_the_same_uniforms(height, width):
    ids = np.arange(3000)
    u = uniforms(ids, 5, 2, 2 * TRIES + 2)
    top, left, h, w = rrc_params(np.full(3000, height), np.full(3000, width), ids, seed=5, epoch=2)
    got = np.stack([top, left, h, w], 1)
    want = np.array([get_params_from(u[s], height, width) for s in range(3000)])
    np.testing.assert_array_equal(got, want)


def _summaries(top, left, h, w, height, width):
    """Scale (area share), log aspect ratio and the relative position of the box inside its free range."""
    free_y, free_x = height - h + 1, width - w + 1
    return {"scale": h * w / (height * width), "log_ratio": np.log(w / h),
            "pos_y": (top + 0.5) / free_y, "pos_x": (left + 0.5) / free_x}


@pytest.mark.parametrize("height,width", SIZES[:4])  # (160, 900) mirrors (900, 160)
def test_distribution_matches_torchvision(height, width):
    torch.manual_seed(height * 1000 + width)
    img = torch.empty(3, height, width)
    ref = np.array([RandomResizedCrop.get_params(img, list(SCALE), list(RATIO)) for _ in range(N)])
    ours = np.stack(rrc_params(np.full(N, height), np.full(N, width), np.arange(N), seed=1, epoch=0), 1)
    ref_s = _summaries(*ref.T, height, width)
    ours_s = _summaries(*ours.T, height, width)
    for name in ref_s:
        p = stats.ks_2samp(ours_s[name], ref_s[name]).pvalue
        assert p > 1e-3, f"{name} at {height}x{width}: KS p = {p:.2e}"
    # the centre-crop fallback (whole image, ratio clamped): same rate within 4.5 binomial sigmas
    full = ours[:, 2] * ours[:, 3] == height * width

    def fallback(a):
        in_ratio = width / height
        fw = width if in_ratio <= RATIO[1] else round(height * RATIO[1])
        fh = height if in_ratio >= RATIO[0] else round(width / RATIO[0])
        return (a[:, 2] == fh) & (a[:, 3] == fw) & (a[:, 0] == (height - fh) // 2) & (a[:, 1] == (width - fw) // 2)

    r_ours, r_ref = fallback(ours).mean(), fallback(ref).mean()
    sigma = math.sqrt(max(r_ref * (1 - r_ref), 1 / N) * 2 / N)
    assert abs(r_ours - r_ref) < 4.5 * sigma, (r_ours, r_ref)
    assert full.mean() <= max(r_ours, 1 / N) + 0.02  # whole-image crops are (almost) all fallbacks


def test_boxes_lie_inside_the_image():
    rng = np.random.default_rng(0)
    hs, ws = rng.integers(1, 1200, 50_000), rng.integers(1, 1200, 50_000)
    top, left, h, w = rrc_params(hs, ws, np.arange(50_000), seed=3, epoch=7)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= hs).all() and (left + w <= ws).all()


def test_a_sample_box_does_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    n = 5000
    hs, ws = rng.integers(100, 900, n), rng.integers(100, 900, n)
    whole = np.stack(rrc_params(hs, ws, np.arange(n), seed=9, epoch=4), 1)
    flips = flip_flags(np.arange(n), seed=9, epoch=4)
    perm = rng.permutation(n)
    for batch in np.array_split(perm, 37):  # uneven batches, shuffled ids
        part = np.stack(rrc_params(hs[batch], ws[batch], batch, seed=9, epoch=4), 1)
        np.testing.assert_array_equal(part, whole[batch])
        np.testing.assert_array_equal(flip_flags(batch, seed=9, epoch=4), flips[batch])
    # ... and does depend on the seed, the epoch and the sample
    other_epoch = np.stack(rrc_params(hs, ws, np.arange(n), seed=9, epoch=5), 1)
    other_seed = np.stack(rrc_params(hs, ws, np.arange(n), seed=10, epoch=4), 1)
    assert (other_epoch != whole).any(1).mean() > 0.95
    assert (other_seed != whole).any(1).mean() > 0.95


def test_flips_are_fair_and_independent_of_the_crop():
    ids = np.arange(100_000)
    f = flip_flags(ids, seed=0, epoch=0)
    assert abs(f.mean() - 0.5) < 4.5 * math.sqrt(0.25 / len(ids))
    top, _, _, _ = rrc_params(np.full(len(ids), 500), np.full(len(ids), 500), ids, seed=0, epoch=0)
    # no correlation between the flip and the crop position (different hash streams)
    assert abs(np.corrcoef(f, top)[0, 1]) < 0.02


def test_uniforms_are_uniform():
    u = uniforms(np.arange(20_000), 0, 0, 4).ravel()
    assert (u >= 0).all() and (u < 1).all()
    assert stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("height,width", [(256, 256), (480, 640), (900, 160), (7, 9)])
def test_centre_crop_box(height, width):
    top, left, h, w = centre_crop_box(np.array([height]), np.array([width]), 224, 224 / 256)
    side = max(round(min(height, width) * 224 / 256), 1)
    assert (h[0], w[0]) == (side, side)
    assert (top[0], left[0]) == ((height - side) // 2, (width - side) // 2)
    with pytest.raises(ValueError, match="ratio"):
        centre_crop_box(np.array([10]), np.array([10]), 224, 1.5)
