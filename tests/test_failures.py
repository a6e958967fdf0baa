"""Failing well: crafted checkpoints are refused without running code, NaN/inf stops the run naming the step
and keeps the last good checkpoint, SIGTERM saves and exits with a resume hint, bad or contradictory
options and unusable run directories fail before any work, naming the option."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fasttrain import checkpoint as ckpt_io
from fasttrain import rundisk
from fasttrain.cli import app
from fasttrain.config import RunConfig
from fasttrain.rundisk import RunDirError
from fasttrain.stopping import LossGuard, NonFiniteLoss, StopSignals
from fasttrain.train import train


def tiny_cfg(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(
        model="resnet9",
        data=str(data),
        out=str(out),
        epochs=2,
        batch_size=50,
        train_subset=200,
        amp="off",
        compile=False,
        device="cpu",
        threads=1,
        seed=0,
        tta="none",
        tensorboard=False,
        model_kwargs={"width": 0.25},
    )
    base.update(kw)
    return RunConfig(**base)


class Payload:
    """Unpickling this runs os.system: what a malicious 'checkpoint' looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ============================================================================ loading never runs code
def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": Payload(marker)}, evil)
    with pytest.raises(ckpt_io.CheckpointError, match="refusing to load .*weights_only") as info:
        ckpt_io.load(evil)
    assert "system" in str(info.value)  # names the offending global
    assert not marker.exists(), "loading ran code from the file"
    # the file really is live: an unrestricted load executes it (so the refusal above is what protected us)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_cli_resume_refuses_crafted_checkpoint(cifar_tensor_slice, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tiny_cfg(cifar_tensor_slice, run).save(run / "config.json")
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "x": Payload(marker)}, run / "checkpoint.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "fasttrain", "run", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load" in proc.stderr and str(run / "checkpoint.pt") in proc.stderr
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = ckpt_io.save(tmp_path / "c.pt", {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ckpt_io.CheckpointError, match="c.pt is truncated or not a fasttrain checkpoint: its zip "
                       "container ends early"):
        ckpt_io.load(path)


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt_io.save(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(3)}, "epoch": 1})

    def no_space(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ckpt_io.CheckpointError, match="disk is full.*previous checkpoint .* is intact"):
        ckpt_io.save(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    assert ckpt_io.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "temp file left behind"


# ============================================================================ NaN / inf
def test_loss_guard_names_the_first_bad_step():
    guard = LossGuard(torch.device("cpu"))
    for step, value in enumerate([1.0, 0.5, float("nan"), float("inf"), 0.2], start=1):
        guard.observe(torch.tensor(value), step)
    with pytest.raises(NonFiniteLoss, match=r"became NaN at step 3 \(epoch 2, batch 1\)"):
        guard.check(steps_per_epoch=2)
    ok = LossGuard(torch.device("cpu"))
    ok.observe(torch.tensor(1.0), 1)
    ok.check()  # finite: no error


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(cifar_tensor_slice, tmp_path, monkeypatch):
    import fasttrain.tasks as tasks_mod

    calls = {"n": 0}
    original = tasks_mod.mixed_cross_entropy

    def poisoned(logits, targets, smoothing):
        calls["n"] += 1
        loss = original(logits, targets, smoothing)
        return loss * float("nan") if calls["n"] == 6 else loss  # step 6: epoch 2, batch 2 of 4

    monkeypatch.setattr(tasks_mod, "mixed_cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteLoss, match=r"NaN at step 6 \(epoch 2, batch 2\).*last good checkpoint"
    ) as info:
        train(tiny_cfg(cifar_tensor_slice, out, epochs=3), quiet=True)
    assert str(out / "checkpoint.pt") in str(info.value)
    kept = ckpt_io.load(out / "checkpoint.pt")
    assert kept["position"] == {"epoch": 1, "batch": 0, "step": 4}, (
        "the diverged state overwrote the checkpoint"
    )
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("task", ["classification", "retrieval"])
def test_cli_divergence_exits_3_naming_the_step(cifar_tensor_slice, tmp_path, task):
    """Both kinds of run take the one launch path: a diverged loss exits 3 with the same message."""
    args = [
        "run",
        "resnet9",
        "--task",
        task,
        "--data",
        cifar_tensor_slice,
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        "--batch-size",
        50,
        "--train-subset",
        100,
        "--width",
        0.25,
        "--device",
        "cpu",
        "--amp",
        "off",
        "--no-compile",
        "--lr",
        "1e30",
        "--threads",
        1,
        "--no-tensorboard",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "fasttrain", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "training loss became" in proc.stderr and "at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no checkpoint was saved" in proc.stderr


# ============================================================================ signals
def test_first_signal_requests_stop_second_aborts():
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(SystemExit) as info:
            signal.raise_signal(signal.SIGTERM)
        assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_prints_resume_hint(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "fasttrain",
        "run",
        "resnet9",
        "--data",
        cifar_tensor_slice,
        "--out",
        out,
        "--epochs",
        8,
        "--batch-size",
        50,
        "--train-subset",
        200,
        "--width",
        0.25,
        "--device",
        "cpu",
        "--amp",
        "off",
        "--no-compile",
        "--threads",
        1,
        "--tta",
        "none",
        "--no-tensorboard",
    ]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert f"resume with: fasttrain run --resume {out}" in stderr
    stopped = ckpt_io.load(out / "checkpoint.pt")["position"]
    assert stopped["step"] >= 4  # at or after the end of epoch 1 (4 steps): nothing done was thrown away
    assert not (out / "summary.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "fasttrain", "run", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 32


# ============================================================================ options and run directory
runner = CliRunner()


@pytest.mark.parametrize(
    "args, option",
    [
        (["--nproc", "0"], "--nproc"),
        (["--batch-size", "50", "--nproc", "3"], "--batch-size"),
        (["--sync-bn", "--device", "cpu"], "--sync-bn"),
        (["--sync-bn", "--device", "auto"], "--sync-bn"),
        (["--nproc", "2", "--device", "cuda:1"], "--device"),
        (["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_or_contradictory_options_fail_before_any_work(args, option, cifar_tensor_slice, tmp_path):
    out = tmp_path / "never"
    result = runner.invoke(
        app, ["run", "resnet9", "--data", str(cifar_tensor_slice), "--out", str(out), *args]
    )
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not out.exists(), "work started before the options were checked"


def test_resume_with_other_options_names_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(out=str(run)).save(run / "config.json")
    result = runner.invoke(app, ["run", "--resume", str(run), "--lr", "0.1", "--seed", "3"])
    assert result.exit_code == 2 and "--lr, --seed" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "config.json" in result.output
    result = runner.invoke(app, ["run", "--resume", str(run)])
    assert result.exit_code == 2 and "no checkpoint.pt yet" in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "MODEL" in result.output


def test_out_that_is_a_file_fails_before_any_work(cifar_tensor_slice, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "run"):
        result = runner.invoke(app, ["run", "resnet9", "--data", str(cifar_tensor_slice), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"--out {out}" in result.output


def test_unwritable_run_dir_fails_before_training(cifar_tensor_slice, tmp_path, monkeypatch):
    def read_only(fd):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(rundisk.os, "fsync", read_only)
    out = tmp_path / "ro"
    with pytest.raises(RunDirError, match="not writable .*Read-only file system"):
        train(tiny_cfg(cifar_tensor_slice, out), quiet=True)
    assert not (out / "config.json").exists() and not list(out.glob(".write-probe*"))


def test_full_disk_fails_before_training(cifar_tensor_slice, tmp_path, monkeypatch):
    class Usage:
        total, used, free = 1 << 30, (1 << 30) - (1 << 20), 1 << 20

    monkeypatch.setattr(rundisk.shutil, "disk_usage", lambda path: Usage())
    out = tmp_path / "full"
    with pytest.raises(RunDirError, match=r"only 1.0 MiB free .* needs about"):
        train(tiny_cfg(cifar_tensor_slice, out), quiet=True)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()
