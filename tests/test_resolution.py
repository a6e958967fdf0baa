"""Progressive resizing and the test resolution: FFCV's schedule reproduced epoch by epoch, the tensor
pipeline's on-device resize against torchvision's, and a run whose metrics show each epoch's resolution,
evaluated at val_res, with every resolution compiled before the clock (no recompiles in timed epochs)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fasttrain.config import ConfigError, resolve
from fasttrain.resolution import ResolutionSchedule, schedule_from

TINY = "test_resolution_tiny"


def ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """libffcv/ffcv-imagenet train_imagenet.py ImageNetTrainer.get_resolution, verbatim (the reference)."""
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize("ramp", [(160, 192, 11, 13), (160, 192, 65, 76), (128, 256, 2, 9), (160, 224, 0, 5),
                                  (96, 96, 3, 3), (160, 320, 10, 11)])
def test_schedule_is_ffcvs_epoch_by_epoch(ramp):
    low, high, start, end = ramp
    schedule = ResolutionSchedule(low, high, start, end)
    got = [schedule.at(e) for e in range(end + 4)]
    assert got == [ffcv_get_resolution(e, low, high, end, start) for e in range(end + 4)]
    assert schedule.resolutions(0, end + 4) == sorted(set(got))  # rising: each once, in order of use
    assert schedule.resolutions(end, end + 4) == [high]  # a resumed run warms up only what is left


def test_ffcv_rn18_16_epochs_trains_12_epochs_at_160():
    """FFCV's README: 160 px until ~75% of training, then 192 (rn18_16_epochs.yaml: start 11, end 13)."""
    schedule = ResolutionSchedule(160, 192, 11, 13)
    assert [schedule.at(e) for e in range(16)] == [160] * 12 + [192] * 4


def test_schedule_settings():
    assert schedule_from(None, None, 0, 0) is None
    assert schedule_from(64, None, 0, 0) == ResolutionSchedule(64, 64, 0, 0)  # a fixed training size
    assert ResolutionSchedule(40, 48, 0, 2).at(1) == 40  # ends that are not multiples of 32 stay the bounds
    for bad, option in ((dict(min_res=64, max_res=32), "--min-res"), (dict(start_ramp=5, end_ramp=2), "--start-ramp"),
                        (dict(val_res=4), "--val-res"), (dict(lr_per_256=0.0), "--lr-per-256")):
        with pytest.raises(ConfigError, match=option):
            resolve("resnet18", None, bad)


def test_lr_per_256_follows_the_images_per_step_and_an_explicit_lr_wins():
    assert resolve("resnet18", None, dict(lr_per_256=0.1, batch_size=1024)).lr == pytest.approx(0.4)
    assert resolve("resnet18", None, dict(lr_per_256=0.1, batch_size=256, accum_steps=2)).lr == pytest.approx(0.2)
    cfg = resolve("resnet18", None, dict(lr=0.3), file_values=dict(lr_per_256=0.1, batch_size=1024))
    assert cfg.lr == 0.3 and cfg.lr_per_256 is None  # given after the file's lr per 256: wins


def test_resize_matches_torchvision_antialiased_resize():
    from torchvision.transforms.v2 import functional as TF

    from fasttrain.pipelines.tensor import resize_images

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 48, 48, 3), dtype=torch.uint8, generator=gen)
    for res in (32, 64, 17):
        got = resize_images(images, res, chunk=2)
        ref = TF.resize(images.permute(0, 3, 1, 2).float(), [res, res], antialias=True).round().clamp(0, 255)
        assert got.shape == (5, res, res, 3) and got.dtype == torch.uint8
        assert (got.permute(0, 3, 1, 2).float() - ref).abs().max() <= 1  # the same filter, to rounding
    assert resize_images(images, 48) is images and resize_images(images, None) is images


def test_tensor_pipeline_yields_batches_at_the_set_resolution():
    from fasttrain.pipelines.tensor import TensorPipeline, resize_images

    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    pipe = TensorPipeline(images, torch.arange(10), 4, shuffle=False)
    pipe.set_resolution(64)
    batches = list(pipe)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 64, 64, 3), (4, 64, 64, 3), (2, 64, 64, 3)]
    assert torch.equal(batches[0][0], resize_images(images[:4], 64))
    pipe.set_resolution(None)
    assert torch.equal(next(iter(pipe))[0], images[:4])


@contextlib.contextmanager
def tiny_model_registered():
    from fasttrain.models.registry import MODELS, register_model

    @register_model(TINY, family="test")
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    try:
        yield
    finally:
        MODELS.pop(TINY, None)


def _run(data, out, **kw):
    from fasttrain.train import train

    with tiny_model_registered():
        settings = dict(data=str(data), out=str(out), device="cpu", batch_size=64, tta="flip", amp="off",
                        train_subset=200, test_subset=50, threads=1)
        cfg = resolve(TINY, None, {**settings, **kw})
        summary = train(cfg, quiet=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_run_ramps_the_resolution_and_evaluates_at_val_res(cifar_tensor_slice, tmp_path):
    """32 px CIFAR images trained at 32, 64, 64 (ramp 0 -> 2, rounded to 32) and evaluated at 96."""
    summary, rows = _run(cifar_tensor_slice, tmp_path / "run", epochs=3, min_res=32, max_res=64, start_ramp=0,
                         end_ramp=2, val_res=96, eval_every=1)
    assert [r["res"] for r in rows] == [32, 64, 64]  # epoch 1: 48 rounds to 64 (ties to even, as numpy)
    assert summary["steps"] == 3 * 4 and all(np.isfinite(r["test_loss"]) for r in rows)
    plain, plain_rows = _run(cifar_tensor_slice, tmp_path / "plain", epochs=1)  # no schedule: no "res", as before
    assert "res" not in plain_rows[0] and np.isfinite(plain["test_loss"])


@pytest.mark.slow
def test_compile_warm_up_covers_every_resolution(cifar_tensor_slice, tmp_path):
    """Batches of 64 (192 images: no short last batch) at 32 and 64 px: two static graphs compiled before the
    clock (inductor takes ~15 s each on 2 cores), none inside the timed epochs."""
    torch._dynamo.reset()
    summary, rows = _run(cifar_tensor_slice, tmp_path / "run", epochs=2, min_res=32, max_res=64, start_ramp=0,
                         end_ramp=1, compile=True, eval_every=0, train_subset=192)
    assert [r["res"] for r in rows] == [32, 64]
    assert summary["compile"] is True and summary["compile_s"] > 0 and summary["recompiles"] == 0
