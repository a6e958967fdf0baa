"""Exact resume: a run stopped by a signal (mid-epoch or at an epoch's end) or killed with -9, then resumed,
ends with the same metrics and weights as an uninterrupted run (CPU, --deterministic); checkpoints restore
every random stream; same seed + --deterministic gives bit-identical runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttrain import checkpoint as ckpt_io, reproducibility
from fasttrain.augment import AugmentConfig, AugmentSampler
from fasttrain.config import RunConfig
from fasttrain.stopping import RunInterrupted
from fasttrain.train import train

TIMED = ("epoch_s", "imgs_per_s")  # the only row fields allowed to differ between runs


def small_cfg(data: Path, out: Path, **kw) -> RunConfig:
    """4 steps per epoch, 3 epochs, with every piece of state a resume must restore: SGD momentum,
    lookahead, EMA (and its update count), mixup (sampler's numpy stream), cutout, a val split with
    model selection (monitor + best weights kept in memory), label smoothing."""
    base = dict(
        model="resnet9",
        data=str(data),
        out=str(out),
        epochs=3,
        batch_size=50,
        train_subset=250,
        lr=0.2,
        schedule="piecewise",
        warmup_frac=0.3,
        label_smoothing=0.1,
        crop_pad=2,
        cutout=8,
        mixup=0.3,
        lookahead=True,
        ema=True,
        ema_decay=0.9,
        val_split=50,
        monitor="val_loss",
        eval_every=1,
        tta="flip",
        amp="off",
        compile=False,
        device="cpu",
        threads=1,
        seed=3,
        deterministic=True,
        tensorboard=False,
        model_kwargs={"width": 0.25},
    )
    base.update(kw)
    return RunConfig(**base)


def rows(run_dir: Path) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMED} for r in out]


def final_weights(run_dir: Path) -> dict:
    ck = ckpt_io.load(run_dir / "checkpoint.pt")
    return {"model": ck["model"], "model_ema": ck["model_ema"]}


def assert_same_weights(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


@pytest.fixture(scope="module")
def reference(cifar_tensor_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    summary = train(small_cfg(cifar_tensor_slice, out), quiet=True)
    return out, summary


# ============================================================================ checkpoint building blocks
def test_rng_capture_restore_roundtrip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = reproducibility.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    reproducibility.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_sampler_and_rng_survive_a_weights_only_file(tmp_path):
    """Everything TrainState writes is plain enough for torch.load(weights_only=True)."""
    sampler = AugmentSampler(AugmentConfig(crop_pad=2, cutout=4, mixup_alpha=0.4), seed=5)
    sampler.sample(8, 32, 32)
    path = ckpt_io.save(
        tmp_path / "c.pt",
        {
            "model": {},
            "sampler": sampler.state_dict(),
            "rng": reproducibility.capture_rng(),
            "np": np.float32(1.5),
            "arr": np.arange(3),
            "p": tmp_path,
        },
    )
    expected = sampler.sample(8, 32, 32)
    loaded = ckpt_io.load(path)
    assert (
        loaded["np"] == 1.5 and torch.equal(loaded["arr"], torch.arange(3)) and loaded["p"] == str(tmp_path)
    )
    fresh = AugmentSampler(AugmentConfig(crop_pad=2, cutout=4, mixup_alpha=0.4), seed=123)
    fresh.load_state_dict(loaded["sampler"])
    got = fresh.sample(8, 32, 32)
    for field in ("offset", "flip", "cutout", "mix_index", "mix_lam"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    reproducibility.restore_rng(loaded["rng"])


def test_attrs_and_plain_objects_roundtrip():
    from fasttrain.optim import Lookahead

    model = torch.nn.Linear(3, 2)
    la = Lookahead(model, total_steps=10)
    state = ckpt_io.state_of(la)
    saved = {k: v.clone() for k, v in state["slow"].items()}
    with torch.no_grad():
        for v in la.slow.values():
            v.add_(1.0)
    ckpt_io.load_state_into(la, state | {"slow": saved}, "lookahead")
    assert all(torch.equal(la.slow[k], saved[k]) for k in saved)

    class Counter:
        updates = 0

    c = Counter()
    c.updates = 7
    st = ckpt_io.Attrs(c, "updates").state_dict()
    c.updates = 0
    ckpt_io.Attrs(c, "updates").load_state_dict(st)
    assert c.updates == 7


# ============================================================================ determinism
def test_same_seed_deterministic_runs_are_bit_identical(reference, cifar_tensor_slice, tmp_path):
    ref_dir, ref_summary = reference
    out = tmp_path / "again"
    summary = train(small_cfg(cifar_tensor_slice, out), quiet=True)
    assert rows(out) == rows(ref_dir)
    for key in ("test_acc", "test_loss", "test_acc_no_tta", "steps"):
        assert summary[key] == ref_summary[key], key
    assert_same_weights(final_weights(out), final_weights(ref_dir))
    # and a different seed really changes the run (the comparison above is not vacuous)
    other = train(small_cfg(cifar_tensor_slice, tmp_path / "seed4", seed=4, epochs=1), quiet=True)
    assert other["test_loss"] != ref_summary["test_loss"]


def test_deterministic_flag_does_not_leak_into_later_runs():
    cpu = torch.device("cpu")
    reproducibility.set_deterministic(True, cpu)
    assert torch.are_deterministic_algorithms_enabled()
    reproducibility.set_deterministic(False, cpu)
    assert not torch.are_deterministic_algorithms_enabled()


# ============================================================================ stop by signal, resume
@pytest.mark.slow
@pytest.mark.parametrize("stop_at_sample", [6, 4], ids=["mid-epoch", "epoch-end"])
def test_signal_stop_then_resume_matches_uninterrupted(
    reference, cifar_tensor_slice, tmp_path, monkeypatch, stop_at_sample
):
    """SIGINT arrives while batch `stop_at_sample` is prepared (4 batches per epoch): the run saves at that
    step, raises RunInterrupted; `resume=True` then finishes with the uninterrupted run's exact results."""
    ref_dir, ref_summary = reference
    calls = {"n": 0}
    original = AugmentSampler.sample

    def sample_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at_sample:
            signal.raise_signal(signal.SIGINT)  # handled by the run: flag only, no KeyboardInterrupt
        return original(self, *args, **kwargs)

    out = tmp_path / "run"
    cfg = small_cfg(cifar_tensor_slice, out)
    monkeypatch.setattr(AugmentSampler, "sample", sample_then_signal)
    with pytest.raises(RunInterrupted) as info:
        train(cfg, quiet=True)
    monkeypatch.setattr(AugmentSampler, "sample", original)
    assert info.value.step == stop_at_sample and info.value.exit_code == 130
    assert "--resume" in str(info.value)
    position = ckpt_io.load(out / "checkpoint.pt")["position"]
    assert position["step"] == stop_at_sample
    assert not (out / "summary.json").exists()
    # the handler is gone again: a later SIGINT would interrupt normally
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    summary = train(cfg, quiet=True, resume=True)
    assert rows(out) == rows(ref_dir)
    for key in ("test_acc", "test_loss", "test_acc_no_tta", "steps"):
        assert summary[key] == ref_summary[key], key
    assert_same_weights(final_weights(out), final_weights(ref_dir))


def test_resume_refuses_finished_run_and_changed_config(reference, cifar_tensor_slice, tmp_path):
    ref_dir, _ = reference
    with pytest.raises(ckpt_io.CheckpointError, match="already finished"):
        train(RunConfig.from_dict(json.loads((ref_dir / "config.json").read_text())), quiet=True, resume=True)
    # a checkpoint from another config is refused, naming what differs
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((ref_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(ckpt_io.CheckpointError, match="lr"):
        train(small_cfg(cifar_tensor_slice, run, lr=0.3), quiet=True, resume=True)


# ============================================================================ kill -9, resume (CLI)
def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fasttrain", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


RUN_ARGS = (
    "run resnet9 --width 0.25 --epochs 5 --batch-size 50 --train-subset 150 --device cpu --no-compile "
    "--amp off --threads 1 --seed 5 --deterministic --eval-every 1 --tta none --no-tensorboard"
).split()


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_loses_at_most_that_epoch(cifar_tensor_slice, tmp_path):
    out = tmp_path / "killed"
    proc = cli(*RUN_ARGS, "--data", cifar_tensor_slice, "--out", out)
    ckpt = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), (
        f"no checkpoint appeared; run ended with {proc.poll()}: {proc.communicate()[1][-2000:]}"
    )
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "the run finished before it could be killed; give it more epochs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    logged = rows(out)  # epochs whose metrics were written before the kill
    saved = ckpt_io.load(ckpt)  # atomic writes: always a whole checkpoint, never a torn one
    done = saved["position"]["epoch"]
    assert done >= 1 and saved["position"]["batch"] == 0
    assert done >= len(logged) - 1, "more than the current epoch was lost"

    resumed = cli("run", "--resume", out, "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    final = rows(out)
    assert [r["epoch"] for r in final] == [1, 2, 3, 4, 5]
    assert final[:done] == logged[:done], "epochs finished before the kill were recomputed differently"
    assert not list(out.glob(".checkpoint.pt.*.tmp")), "a temp file of an interrupted write survived"

    # ... and the result is the uninterrupted run's, bit for bit (deterministic CPU run)
    ref = tmp_path / "uninterrupted"
    full = cli(*RUN_ARGS, "--data", cifar_tensor_slice, "--out", ref, "--json")
    stdout, stderr = full.communicate(timeout=300)
    assert full.returncode == 0, stderr[-3000:]
    ref_summary = json.loads(stdout.strip().splitlines()[-1])
    assert final == rows(ref)
    assert summary["test_acc"] == ref_summary["test_acc"] and summary["test_loss"] == ref_summary["test_loss"]


# ============================================================================ GPU (skipped without CUDA)
@pytest.mark.gpu
def test_cuda_rng_roundtrip():
    torch.zeros(1, device="cuda")  # initialise CUDA so its generators are captured
    torch.cuda.manual_seed_all(1)
    state = reproducibility.capture_rng()
    assert state["cuda"] is not None
    first = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(9)
    reproducibility.restore_rng(state)
    assert torch.equal(first, torch.rand(4, device="cuda"))


@pytest.mark.gpu
def test_cuda_signal_stop_then_resume(cifar_tensor_slice, tmp_path, monkeypatch):
    """On CUDA --deterministic is best effort (some kernels have no deterministic version), so the resumed
    run must match the uninterrupted one closely rather than bit for bit."""
    ref = train(small_cfg(cifar_tensor_slice, tmp_path / "ref", device="cuda"), quiet=True)
    calls = {"n": 0}
    original = AugmentSampler.sample

    def sample_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(AugmentSampler, "sample", sample_then_signal)
    with pytest.raises(RunInterrupted):
        train(small_cfg(cifar_tensor_slice, out, device="cuda"), quiet=True)
    monkeypatch.setattr(AugmentSampler, "sample", original)
    summary = train(small_cfg(cifar_tensor_slice, out, device="cuda"), quiet=True, resume=True)
    assert summary["steps"] == ref["steps"]
    assert summary["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-3)
