"""DDP on CPU with the gloo backend: 2 processes compute what 1 process computes.

- Rank slicing of a global batch (data and augmentation parameters, mixup partners included) gives
  exactly the rows of the full batch (no process group needed).
- torchrun, 2 processes, a model without BatchNorm: every metric equals the single-process run's within
  float-summation tolerance (the tensor pipeline's global batches make the runs equivalent).
- `fasttrain run --nproc 2` (the CLI launch) on a BatchNorm model: metrics equal within a tolerance (BN
  statistics are per process without --sync-bn, which PyTorch supports only on CUDA); only rank 0 writes.

This file is also the torchrun worker of the second test (`python -m torch.distributed.run ... test_ddp.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

NO_BN_MODEL = "test_ddp_no_bn"


@contextlib.contextmanager
def no_bn_model_registered():
    """Registers the model for the duration of a test only, so the zoo's model list stays exact."""
    from fasttrain.models.registry import MODELS

    register_no_bn_model()
    try:
        yield
    finally:
        MODELS.pop(NO_BN_MODEL, None)


def register_no_bn_model() -> None:
    """A small conv net without BatchNorm, so DDP has nothing per-process in its forward pass."""
    from fasttrain.models.registry import MODELS, register_model

    if NO_BN_MODEL in MODELS:
        return

    @register_model(NO_BN_MODEL, family="test")
    def no_bn(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )


def no_bn_cfg(data: str, out: str):
    """Every feature whose state or randomness DDP could get wrong: mixup across rank slices, cutout,
    crops, flips, EMA, lookahead, a val split with model selection, flip TTA."""
    from fasttrain.config import RunConfig

    return RunConfig(
        model=NO_BN_MODEL,
        data=data,
        out=out,
        epochs=3,
        batch_size=40,
        train_subset=240,
        val_split=40,
        monitor="val_loss",
        lr=0.5,
        schedule="piecewise",
        warmup_frac=0.3,
        crop_pad=2,
        cutout=8,
        mixup=0.4,
        label_smoothing=0.1,
        ema=True,
        ema_decay=0.8,
        lookahead=True,
        tta="flip",
        eval_every=1,
        amp="off",
        compile=False,
        device="cpu",
        threads=1,
        seed=7,
        tensorboard=False,
    )


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_files(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


def torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ============================================================================ slicing, no process group
@pytest.mark.parametrize("mix", ["none", "mixup", "cutmix"])
def test_rank_slices_equal_the_full_batch_rows(mix):
    from fasttrain.augment import AugmentConfig, AugmentSampler, apply, norm_constants
    from fasttrain.distributed import DistContext

    n, h, w = 12, 16, 16
    x = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    cfg = AugmentConfig(
        crop_pad=2,
        cutout=5,
        mixup_alpha=0.5 if mix == "mixup" else 0.0,
        cutmix_alpha=0.5 if mix == "cutmix" else 0.0,
    )
    params = AugmentSampler(cfg, seed=1).sample(n, h, w)
    assert params.has_mix == (mix != "none")
    scale, bias = norm_constants([0.5] * 3, [0.25] * 3, "cpu")
    full, t_full = apply(x, y, params, scale, bias)
    for world in (2, 3, 4):
        parts = [
            DistContext(rank=r, world_size=world).augment(apply, x, y, params, scale, bias)
            for r in range(world)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), full), world
        assert torch.equal(torch.cat([p[1].y_a for p in parts]), t_full.y_a)
        assert torch.equal(torch.cat([p[1].y_b for p in parts]), t_full.y_b)
        assert torch.equal(torch.cat([p[1].lam for p in parts]), t_full.lam)


def test_slices_cover_each_sample_once():
    from fasttrain.distributed import DistContext

    for world in (1, 2, 3, 8):
        ctxs = [DistContext(rank=r, world_size=world) for r in range(world)]
        batch = [i for c in ctxs for i in range(48)[c.batch_slice(48)]]
        assert batch == list(range(48))
        evals = [i for c in ctxs for i in range(101)[c.eval_slice(101)]]
        assert evals == list(range(101))
        trimmed = ctxs[0].trim(list(range(103)))
        assert len(trimmed) % world == 0 and len(trimmed) > 103 - world


# ============================================================================ torchrun, 2 processes
def close(a, b, rel=2e-4, abs_=2e-5) -> bool:
    return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_without_bn(cifar_tensor_slice, tmp_path):
    from fasttrain.train import train

    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    with no_bn_model_registered():
        single = train(no_bn_cfg(str(cifar_tensor_slice), str(single_dir)), quiet=True)
    proc = torchrun(2, __file__, str(cifar_tensor_slice), str(ddp_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = json.loads((ddp_dir / "summary.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["train_samples"] == single["train_samples"] == 200 and ddp["steps"] == single["steps"]
    for key in ("test_loss", "test_acc", "test_top5", "test_f1", "test_acc_no_tta"):
        assert close(ddp[key], single[key]), (key, ddp[key], single[key])
    rows_1, rows_2 = metric_rows(single_dir), metric_rows(ddp_dir)
    assert len(rows_1) == len(rows_2) == 3
    for r1, r2 in zip(rows_1, rows_2):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr"):
            assert close(r1[key], r2[key]), (r1["epoch"], key, r1[key], r2[key])
    # only rank 0 wrote, and it wrote what a single process writes
    assert run_files(ddp_dir) == run_files(single_dir)


@pytest.mark.slow
def test_cli_nproc_2_matches_single_process_and_resumes_exactly(cifar_tensor_slice, tmp_path):
    """The real launch path: `fasttrain run --nproc 2` re-executes under torchrun. ResNet9 has BatchNorm,
    whose statistics are per process on a CPU: the 2-process run computes another function than one
    process (half-batch statistics), so its losses are not compared with the single process's (that
    equivalence is the no-BN test's job, where it holds to rounding). What must hold: the same steps and
    learning rates, rank 0 alone reports and writes what one process writes, and a SIGTERM to the launched
    job saves a checkpoint on which all ranks agree; `--resume` (which relaunches 2 processes from
    config.json) then ends exactly where the uninterrupted 2-process run ends (same machine: bit for bit)."""
    common = [
        "run", "resnet9", "--data", str(cifar_tensor_slice), *(
            "--epochs 3 --batch-size 50 --train-subset 200 --width 0.25 --device cpu --no-compile --amp off "
            "--seed 1 --threads 1 --tta none --no-tensorboard --json"
        ).split(),
    ]  # fmt: skip
    runs = {}
    for name, extra in (("single", []), ("ddp", ["--nproc", "2"])):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "fasttrain", *common, "--out", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert len(json_lines) == 1, "only rank 0 may report"
        runs[name] = (out, json.loads(json_lines[0]))
    (s_dir, single), (d_dir, ddp) = runs["single"], runs["ddp"]
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 12
    rows_1, rows_2 = metric_rows(s_dir), metric_rows(d_dir)
    assert len(rows_1) == len(rows_2) == 3
    for r1, r2 in zip(rows_1, rows_2):
        assert r1["lr"] == r2["lr"] and math.isfinite(r2["train_loss"]) and math.isfinite(r2["test_loss"])
    assert run_files(d_dir) == run_files(s_dir)
    assert json.loads((d_dir / "config.json").read_text())["nproc"] == 2  # `--resume` relaunches 2 processes

    # SIGTERM to the job, then --resume: bit-identical to the uninterrupted 2-process run
    import signal
    import time

    out = tmp_path / "ddp_stopped"
    job = subprocess.Popen(
        [sys.executable, "-m", "fasttrain", *common, "--out", str(out), "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 2 (of 3; an epoch takes ~0.3 s here)
    assert job.poll() is None, "the run ended before it could be stopped"
    job.send_signal(
        signal.SIGTERM
    )  # the launcher exec'd torchrun: the signal reaches torchrun, then the workers
    _, stderr = job.communicate(timeout=300)
    assert stderr.count(f"resume with: fasttrain run --resume {out}") == 1, stderr[-4000:]  # rank 0 only
    from fasttrain.checkpoint import load

    stopped = load(out / "checkpoint.pt")
    assert stopped["world_size"] == 2 and len(stopped["ranks"]) == 2 and stopped["position"]["step"] < 12
    resumed = subprocess.run(
        [sys.executable, "-m", "fasttrain", "run", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "--nproc-per-node=2" in resumed.stderr
    timed = ("epoch_s", "imgs_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timed} for r in rows]  # noqa: E731
    assert strip(metric_rows(out)) == strip(metric_rows(d_dir))
    final = json.loads((out / "summary.json").read_text())
    assert final["test_loss"] == ddp["test_loss"] and final["test_acc"] == ddp["test_acc"]


# ============================================================================ torchrun worker
if __name__ == "__main__":
    register_no_bn_model()
    from fasttrain.train import train

    train(no_bn_cfg(sys.argv[1], sys.argv[2]), quiet=True)
