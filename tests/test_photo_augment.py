"""Photo augmentations (fasttrain/augment/photo.py) against torchvision.transforms.v2 on real photos:
- each op, batched with a parameter per image, equals torchvision's functional op on each image alone with the
  same parameter (bit for bit; contrast and sharpness, whose float reductions may run in another order for a
  batch than for one image on some CPUs, within 1 level on at most 0.1% of the values);
- a whole batch (RandAugment or TrivialAugmentWide, colour jitter, erasing) equals torchvision's policy steps
  replayed per image with the drawn parameters;
- the draws follow torchvision's distributions: seeded chi-square / KS tests against torchvision's own
  RandAugment, TrivialAugmentWide, ColorJitter and RandomErasing sampling;
- the draws are counter-based: an image's parameters depend on (seed, epoch, dataset index) only;
- `fasttrain run` trains with the options on the tensor and the streaming pipeline and records them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fasttrain.augment import photo as P
from fasttrain.augment.photo import PhotoAugment, PhotoConfig

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]


def photo_batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, h, w, 3): random crops of scikit-image's colour photos."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = PHOTOS[i % len(PHOTOS)]
        t, left = rng.integers(0, p.shape[0] - h), rng.integers(0, p.shape[1] - w)
        out.append(p[t : t + h, left : left + w])
    return torch.from_numpy(np.stack(out))


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, name: str, loose: bool = False) -> None:
    diff = (ours.int() - ref.int()).abs()
    if loose:  # a float reduction's order may differ between one image and a batch
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3, f"{name}: max {diff.max()}, {(diff > 0).sum()}"
    else:
        assert torch.equal(ours, ref), f"{name}: {(diff > 0).sum()} values differ (max {diff.max()})"


# ============================================================================ each op vs torchvision's functional
TA = v2.TrivialAugmentWide()
COLOUR = {  # name -> (ours, torchvision's per image, factor range)
    "brightness": (P.brightness, F.adjust_brightness, (0.0, 2.0)),
    "saturation": (P.saturation, F.adjust_saturation, (0.0, 2.0)),
    "contrast": (P.contrast, F.adjust_contrast, (0.0, 2.0)),
    "sharpness": (P.sharpness, F.adjust_sharpness, (0.0, 2.0)),
    "hue": (P.hue, F.adjust_hue, (-0.5, 0.5)),
    "solarize": (P.solarize, lambda im, m: F.solarize(im, 255.0 * m), (0.0, 1.0)),
}


@pytest.mark.parametrize("name", list(COLOUR))
@pytest.mark.parametrize("hw", [(37, 53), (48, 48)])
def test_colour_op_equals_torchvision_per_image(name, hw):
    ours_fn, ref_fn, (lo, hi) = COLOUR[name]
    x = photo_batch(12, *hw, seed=1).permute(0, 3, 1, 2)  # NCHW view of NHWC storage, as apply_photo uses
    f = np.random.default_rng(2).uniform(lo, hi, len(x)).astype(np.float32).astype(np.float64)
    f[0] = lo  # the range's ends
    f[1] = hi
    ours = ours_fn(x, f)
    for i in range(len(x)):
        assert_matches(ours[i], ref_fn(x[i].contiguous(), float(f[i])), f"{name}[{i}]",
                       loose=name in ("contrast", "sharpness"))


def test_posterize_equalize_autocontrast_equal_torchvision():
    x = photo_batch(9, 40, 44, seed=3).permute(0, 3, 1, 2)
    bits = np.arange(9, dtype=np.float64)  # 0 .. 8
    ours = P.posterize(x, bits)
    for i in range(len(x)):
        assert torch.equal(ours[i], F.posterize(x[i].contiguous(), int(bits[i])))
        for op in ("AutoContrast", "Equalize"):  # torchvision's own function on the group: per image anyway
            assert torch.equal(P.POLICY_OPS[op](x, None)[i], TA._apply_image_or_video_transform(
                x[i].contiguous(), op, 0.0, "nearest", TA._fill))


@pytest.mark.parametrize("op", P.GEOMETRIC)
@pytest.mark.parametrize("hw", [(37, 53), (48, 48)])
def test_geometric_op_equals_torchvision_per_image(op, hw):
    """Every magnitude bin of TrivialAugmentWide (the wider space), both signs: shear, translate (toward zero),
    rotations including the rot90 fast paths (90 degrees on a square image)."""
    x = photo_batch(31 * 2, *hw, seed=4).permute(0, 3, 1, 2)
    table = P.magnitude_table("trivialaugment", 31, *hw)[list(P.SPACES["trivialaugment"]).index(op)]
    m = np.concatenate([table, -table])
    ours = P.affine(x, op, m)
    for i in range(len(x)):
        ref = TA._apply_image_or_video_transform(x[i].contiguous(), op, float(m[i]), "nearest", TA._fill)
        assert_matches(ours[i], ref, f"{op}({m[i]})")


def test_erase_equals_torchvision():
    x = photo_batch(6, 30, 40, seed=5).permute(0, 3, 1, 2)
    boxes = np.array([[0, 0, 5, 7], [3, 4, 10, 2], [25, 35, 5, 5], [0, 0, 29, 39], [12, 0, 1, 40], [7, 9, 0, 0]])
    fill = (124, 116, 104)
    ours = P.erase(x, boxes, fill)
    for i, (t, left, h, w) in enumerate(boxes):
        ref = F.erase(x[i].contiguous(), int(t), int(left), int(h), int(w), torch.tensor(fill)[:, None, None])
        assert torch.equal(ours[i], ref)


# ============================================================================ whole batches vs the policy per image
def replay(img: torch.Tensor, params: P.PhotoParams, i: int, names, fill) -> torch.Tensor:
    """torchvision, one image: the policy's ops in order, ColorJitter's adjustments in its order, erase."""
    for slot in range(params.ops.shape[1]):
        img = TA._apply_image_or_video_transform(img, names[params.ops[i, slot]], float(params.magnitudes[i, slot]),
                                                 "nearest", TA._fill)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for fn in params.jitter_order[i]:
        if not np.isnan(params.jitter[i, fn]):
            img = adjust[fn](img, float(params.jitter[i, fn]))
    t, left, h, w = (int(v) for v in params.erase[i])
    if h:
        img = F.erase(img, t, left, h, w, torch.tensor(fill)[:, None, None])
    return img


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_batch_equals_torchvision_replayed_per_image(policy):
    cfg = PhotoConfig(auto_augment=policy, num_ops=3, magnitude=14, color_jitter=(0.4, 0.4, 0.4, 0.1),
                      random_erasing=0.5)
    aug = PhotoAugment(cfg, seed=7, fill=(120, 110, 100))
    x = photo_batch(48, 40, 40, seed=6)
    ids = np.arange(100, 148)
    params = aug.sample(len(x), 40, 40, ids, epoch=2)
    out = P.apply_photo(x, params, aug.names, aug.fill)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(aug(x, ids=ids, epoch=2), out)
    assert torch.equal(x, photo_batch(48, 40, 40, seed=6))  # the input is left alone
    for i in range(len(x)):
        ref = replay(x[i].permute(2, 0, 1).contiguous(), params, i, aug.names, aug.fill)
        assert_matches(out[i].permute(2, 0, 1), ref, f"image {i}", loose=True)
    assert (params.erase[:, 2] > 0).any() and (params.erase[:, 2] == 0).any()


# ============================================================================ the distributions match torchvision's
def torchvision_policy_draws(policy, n: int, h: int = 32, w: int = 32) -> list[tuple[str, float]]:
    """(op, magnitude) of every op torchvision's own policy applies over n calls (the ops themselves skipped)."""
    t = v2.RandAugment(num_ops=2, magnitude=9) if policy == "randaugment" else v2.TrivialAugmentWide()
    seen = []
    t._apply_image_or_video_transform = lambda img, op, m, **kw: seen.append((op, m)) or img
    torch.manual_seed(0)
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    for _ in range(n):
        t(img)
    return seen


def ours_policy_draws(policy, n: int, h: int = 32, w: int = 32) -> list[tuple[str, float]]:
    aug = PhotoAugment(PhotoConfig(auto_augment=policy, num_ops=2, magnitude=9), seed=11)
    p = aug.sample(n, h, w, np.arange(n), epoch=0)
    return [(aug.names[o], float(m)) for o, m in zip(p.ops.ravel(), p.magnitudes.ravel())]


def chi2_same(a: list, b: list) -> float:
    """p-value of a chi-square test that two samples of categories come from one distribution."""
    cats = sorted(set(a) | set(b))
    table = np.array([[sum(1 for v in s if v == c) for c in cats] for s in (a, b)])
    return stats.chi2_contingency(table)[1]


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policy_draws_follow_torchvision(policy):
    n = 3000 if policy == "randaugment" else 6000
    theirs, ours = torchvision_policy_draws(policy, n), ours_policy_draws(policy, n)
    assert len(theirs) == len(ours)
    assert {v for v in ours} <= {v for v in theirs} | {(op, -m) for op, m in theirs}  # only torchvision's values
    assert chi2_same([op for op, _ in theirs], [op for op, _ in ours]) > 1e-3  # ops uniform over the space
    assert chi2_same([m < 0 for _, m in theirs if m], [m < 0 for _, m in ours if m]) > 1e-3  # signs
    if policy == "trivialaugment":  # magnitude bins uniform: compare |m| per op family on one scale
        space = list(P.SPACES[policy])
        table = P.magnitude_table(policy, 31, 32, 32)

        def bins(draws):
            return [int(np.argmin(np.abs(table[space.index(op)] - abs(m)))) for op, m in draws
                    if op in ("Brightness", "Color", "Contrast", "Sharpness", "ShearX", "ShearY", "Rotate")]
        assert chi2_same(bins(theirs), bins(ours)) > 1e-3
    else:
        assert {abs(m) for op, m in ours if op == "Rotate"} == {abs(m) for op, m in theirs if op == "Rotate"}


def test_jitter_and_erasing_draws_follow_torchvision():
    n = 3000
    jitter = v2.ColorJitter(0.4, 0.3, 0.2, 0.1)
    torch.manual_seed(0)
    theirs = [jitter.make_params([]) for _ in range(n)]
    aug = PhotoAugment(PhotoConfig(color_jitter=(0.4, 0.3, 0.2, 0.1), random_erasing=0.5), seed=3)
    ours = aug.sample(n, 64, 48, np.arange(n), epoch=1)
    for j, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
        assert stats.ks_2samp([p[key] for p in theirs], ours.jitter[:, j]).pvalue > 1e-3, key
    assert chi2_same([tuple(p["fn_idx"].tolist()) for p in theirs], [tuple(o) for o in ours.jitter_order]) > 1e-3
    erasing = v2.RandomErasing(p=0.5, value=0)
    img = torch.zeros(3, 64, 48, dtype=torch.uint8)
    boxes = []
    for _ in range(n):
        if torch.rand(1) < erasing.p:  # RandomErasing.forward: applied with probability p
            b = erasing.make_params([img])
            boxes.append((b["h"], b["w"]) if b["v"] is not None else (0, 0))
        else:
            boxes.append((0, 0))
    theirs_hw, ours_hw = np.array(boxes), ours.erase[:, 2:]
    assert chi2_same(list(theirs_hw[:, 0] > 0), list(ours_hw[:, 0] > 0)) > 1e-3  # how often an image is erased
    on_t, on_o = theirs_hw[theirs_hw[:, 0] > 0], ours_hw[ours_hw[:, 0] > 0]
    assert stats.ks_2samp(on_t.prod(1), on_o.prod(1)).pvalue > 1e-3  # box areas
    assert stats.ks_2samp(on_t[:, 0] / on_t[:, 1], on_o[:, 0] / on_o[:, 1]).pvalue > 1e-3  # aspect ratios
    assert (on_o[:, 0] < 64).all() and (on_o[:, 1] < 48).all()
    assert ((ours.erase[:, 0] + ours.erase[:, 2] <= 64) & (ours.erase[:, 1] + ours.erase[:, 3] <= 48)).all()


# ============================================================================ counter-based draws
def test_an_image_draws_the_same_whatever_its_batch():
    aug = PhotoAugment(PhotoConfig(auto_augment="trivialaugment", color_jitter=(0.4, 0.4, 0.4, 0.1),
                                   random_erasing=0.5), seed=5, batch_seed=99)
    ids = np.arange(64)
    whole = aug.sample(64, 32, 32, ids, epoch=3)
    order = np.random.default_rng(0).permutation(64)[:20]
    part = aug.sample(20, 32, 32, ids[order], epoch=3)
    for field in ("ops", "magnitudes", "jitter_order", "jitter", "erase"):
        assert np.array_equal(getattr(whole, field)[order], getattr(part, field)), field
    assert not np.array_equal(aug.sample(64, 32, 32, ids, epoch=4).ops, whole.ops)  # a new epoch, new draws
    keys, seed = aug.keys(64, torch.from_numpy(ids), batch=5)  # host indices key the draws ...
    assert np.array_equal(keys, ids) and seed == 5
    keys, seed = aug.keys(64, None, batch=5)  # ... else (batch, position), with the per-rank seed
    assert seed == 99 and len(set(keys.tolist()) | set(aug.keys(64, None, batch=6)[0].tolist())) == 128
    x = photo_batch(64, 32, 32)
    assert torch.equal(aug(x, ids=ids, epoch=3), aug(x, ids=ids, epoch=3))


def test_off_is_the_identity_and_bad_input_is_named():
    x = photo_batch(4, 16, 16)
    assert PhotoAugment(PhotoConfig(), seed=0)(x) is x
    with pytest.raises(ValueError, match="uint8"):
        P.apply_photo(x.float(), P.PhotoAugment(PhotoConfig(random_erasing=1.0), seed=0).sample(
            4, 16, 16, np.arange(4), 0))
    with pytest.raises(ValueError, match="magnitude"):
        PhotoConfig(auto_augment="randaugment", magnitude=31)


@pytest.mark.gpu
def test_cuda_batch_equals_the_cpu_batch():
    aug = PhotoAugment(PhotoConfig(auto_augment="trivialaugment", color_jitter=(0.4, 0.4, 0.4, 0.1),
                                   random_erasing=0.5), seed=1)
    x = photo_batch(256, 64, 64)
    cpu, gpu = aug(x, ids=np.arange(256)), aug(x.cuda(), ids=np.arange(256)).cpu()
    diff = (cpu.int() - gpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float reductions in another order


# ============================================================================ through `fasttrain run`
def cli_run(data, out, *extra) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "fasttrain", "run", "resnet9", "--width", "0.25", "--data", str(data), "--out",
            str(out), "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--threads", "1", "--no-compile",
            "--amp", "off", "--tta", "none", "--no-tensorboard", "--auto-augment", "randaugment",
            "--randaugment-ops", "2", "--randaugment-magnitude", "12", "--color-jitter", "0.4,0.4,0.4,0.1",
            "--random-erasing", "0.25", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_run_trains_with_photo_augmentations(cifar_tensor_slice, tmp_path):
    done = cli_run(cifar_tensor_slice, tmp_path / "run", "--train-subset", "96", "--test-subset", "32")
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["auto_augment"], config["randaugment_ops"], config["randaugment_magnitude"]) == ("randaugment", 2, 12)
    assert config["color_jitter"] == [0.4, 0.4, 0.4, 0.1] and config["random_erasing"] == 0.25
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_samples"] == 96 and 0 <= summary["test_acc"] <= 1


@pytest.mark.parametrize("option,value,words", [("--color-jitter", "0.4,0.4", "1, 3 or 4 numbers"),
                                                ("--auto-augment", "randaug", "did you mean randaugment"),
                                                ("--randaugment-magnitude", "31", "[0, 30]"),
                                                ("--random-erasing", "1.5", "[0, 1]")])
def test_bad_photo_options_are_one_error_line(option, value, words, tmp_path):
    from typer.testing import CliRunner

    from fasttrain.cli import app

    res = CliRunner().invoke(app, ["run", "resnet9", "--data", str(tmp_path), option, value, "--print-config"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"error: {option}" in res.stderr and words in res.stderr, res.stderr


@pytest.mark.slow
def test_run_streams_with_photo_augmentations(tmp_path, cpu_jpeg_decoder):
    from fasttrain.data.jpeg_store import write_jpeg_store
    from test_stream_pipeline import CLASSES, photo_jpegs

    store = tmp_path / "photos"
    write_jpeg_store(store, {"train": photo_jpegs(32, 0), "test": photo_jpegs(8, 1)}, CLASSES, workers=1,
                     log=lambda s: None)
    done = cli_run(store, tmp_path / "run", "--pipeline", "stream", "--min-res", "32", "--crop-pad", "0",
                   "--auto-augment", "trivialaugment")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["auto_augment"] == "trivialaugment"
