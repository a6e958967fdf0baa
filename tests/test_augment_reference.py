"""Properties of the reference augmentation, plus a per-sample loop implementation to compare against."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fasttrain.augment import AugmentConfig, AugmentSampler, apply, identity_params, norm_constants, normalize

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def _batch(n=8, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _loop_reference(x, params, scale, bias):
    """Independent per-sample implementation (F.pad + slicing) of the contract, in fp32."""
    n, h, w, c = x.shape
    pad = params.pad
    imgs = []
    for k in range(n):
        img = x[k].permute(2, 0, 1).float()[None]  # 1, C, H, W raw pixel values
        if pad:
            img = F.pad(img, (pad,) * 4, mode="reflect" if params.pad_mode == "reflect" else "constant")
        dy, dx = params.offset[k].tolist()
        img = img[:, :, dy : dy + h, dx : dx + w]
        if params.flip[k]:
            img = img.flip(-1)
        f = img[0].permute(1, 2, 0) * scale + bias
        y0, x0, y1, x1 = params.cutout[k].tolist()
        f[y0:y1, x0:x1] = 0.0
        imgs.append(f)
    out = []
    for k in range(n):
        m = params.mix_index[k].item()
        lam = params.mix_lam[k]
        f = imgs[k] * lam + imgs[m] * (1 - lam)
        y0, x0, y1, x1 = params.cutmix[k].tolist()
        f[y0:y1, x0:x1] = imgs[m][y0:y1, x0:x1]
        out.append(f)
    return torch.stack(out).permute(0, 3, 1, 2)


@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
@pytest.mark.parametrize("mix", ["none", "mixup", "cutmix"])
def test_matches_per_sample_loop(pad_mode, mix):
    x, y = _batch(7, 20, 24, seed=1)  # odd batch, H != W
    cfg = AugmentConfig(crop_pad=3, pad_mode=pad_mode, flip=True, cutout=6,
                        mixup_alpha=1.0 if mix == "mixup" else 0.0, cutmix_alpha=1.0 if mix == "cutmix" else 0.0)
    params = AugmentSampler(cfg, seed=5).sample(7, 20, 24)
    scale, bias = norm_constants(MEAN, STD)
    out, targets = apply(x, y, params, scale, bias, torch.float32)
    expected = _loop_reference(x, params, scale, bias)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_flip_twice_is_identity():
    x, y = _batch()
    scale, bias = norm_constants(MEAN, STD)
    p = identity_params(len(x))
    plain, _ = apply(x, y, p, scale, bias)
    p.flip[:] = True
    flipped, _ = apply(x, y, p, scale, bias)
    assert not torch.equal(flipped, plain)
    assert torch.equal(flipped.flip(-1), plain)


def test_cutout_zeroes_exactly_the_box():
    x, y = _batch()
    scale, bias = norm_constants(MEAN, STD)
    p = identity_params(len(x))
    plain, _ = apply(x, y, p, scale, bias)
    p.cutout = torch.tensor([[2, 3, 10, 7]] * len(x), dtype=torch.int32)
    p.has_cutout = True
    cut, _ = apply(x, y, p, scale, bias)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[2:10, 3:7] = True
    assert torch.all(cut[:, :, inside] == 0)
    assert torch.equal(cut[:, :, ~inside], plain[:, :, ~inside])


def test_cutmix_lambda_is_kept_area_and_targets_sum_to_one():
    x, y = _batch(16)
    cfg = AugmentConfig(crop_pad=0, flip=False, cutmix_alpha=1.0)
    sampler = AugmentSampler(cfg, seed=3)
    for _ in range(5):
        p = sampler.sample(16, 32, 32)
        scale, bias = norm_constants(MEAN, STD)
        out, t = apply(x, y, p, scale, bias)
        plain = normalize(x, scale, bias, torch.float32)
        # fraction of pixels still equal to the sample's own image (partners differ almost surely)
        own = (out == plain).all(1).float().mean((1, 2))
        differs = (p.mix_index != torch.arange(16))
        torch.testing.assert_close(t.lam[differs], own[differs])
        soft = t.lam[:, None] * F.one_hot(t.y_a, 10) + (1 - t.lam[:, None]) * F.one_hot(t.y_b, 10)
        torch.testing.assert_close(soft.sum(1), torch.ones(16))
        assert torch.all((t.lam >= 0) & (t.lam <= 1))


def test_lambda_one_is_identity():
    x, y = _batch()
    scale, bias = norm_constants(MEAN, STD)
    p = identity_params(len(x))
    p.mix_index = torch.randperm(len(x))
    p.has_mix = True  # mixing "on" with lam = 1 and an empty cutmix box must change nothing
    mixed, t = apply(x, y, p, scale, bias)
    assert torch.equal(mixed, normalize(x, scale, bias, torch.float32))
    assert torch.equal(t.lam, torch.ones(len(x)))


def test_normalisation_and_dtypes():
    x, y = _batch()
    scale, bias = norm_constants(MEAN, STD)
    out, _ = apply(x, y, identity_params(len(x)), scale, bias, torch.float32)
    want = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(MEAN).double()[:, None, None]) / \
        torch.tensor(STD).double()[:, None, None]
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5)
    for dtype in (torch.bfloat16, torch.float16):
        o, _ = apply(x, y, identity_params(len(x)), scale, bias, dtype)
        assert o.dtype == dtype and o.shape == (8, 3, 32, 32)
        assert torch.equal(o, out.to(dtype))


def test_zero_padding_reads_pixel_zero():
    x, y = _batch(2)
    scale, bias = norm_constants(MEAN, STD)
    p = identity_params(2)
    p.pad, p.pad_mode = 4, "zero"
    p.offset = torch.zeros(2, 2, dtype=torch.int32)  # shift by -4: top 4 rows and left 4 cols are padding
    out, _ = apply(x, y, p, scale, bias)
    expect = bias[None, :, None, None].expand(2, 3, 4, 32)
    assert torch.equal(out[:, :, :4, :], expect)
    assert torch.equal(out[:, :, 4:, 4:], normalize(x, scale, bias, torch.float32)[:, :, :28, :28])


def test_sampler_is_deterministic_and_in_range():
    cfg = AugmentConfig(crop_pad=4, cutout=8, mixup_alpha=0.4, cutmix_alpha=1.0)
    a = AugmentSampler(cfg, seed=11).sample(64, 32, 32)
    b = AugmentSampler(cfg, seed=11).sample(64, 32, 32)
    for field in ("offset", "flip", "cutout", "mix_index", "mix_lam", "cutmix"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.offset.min() >= 0 and a.offset.max() <= 8
    sizes = (a.cutout[:, 2] - a.cutout[:, 0])
    assert sizes.max() <= 8 and sizes.min() >= 4  # clipped at the border to at least half
    assert sorted(a.mix_index.tolist()) == list(range(64))


def test_bad_inputs_have_clear_errors():
    scale, bias = norm_constants(MEAN, STD)
    p = identity_params(2)
    with pytest.raises(ValueError, match="ndim|4-d"):
        apply(torch.zeros(2, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), p, scale, bias)
    with pytest.raises(ValueError, match="uint8"):
        apply(torch.zeros(2, 32, 32, 3), torch.zeros(2, dtype=torch.long), p, scale, bias)
    with pytest.raises(ValueError, match="pad_mode"):
        AugmentConfig(pad_mode="wrap")
