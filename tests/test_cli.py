"""CLI end to end: convert a real JPEG slice, train one epoch, check the run directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def fasttrain(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "fasttrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"fasttrain {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_commands():
    out = fasttrain("--help").stdout
    for cmd in ("convert", "run", "quickstart"):
        assert cmd in out


def test_convert_then_run_one_epoch(cifar_jpeg_slice, tmp_path):
    data = tmp_path / "data" / "cifar10"
    out = fasttrain("convert", "cifar10", "--source", cifar_jpeg_slice, "--out", data).stdout
    assert "wrote" in out
    assert "reusing" in fasttrain("convert", "cifar10", "--source", cifar_jpeg_slice, "--out", data).stdout
    run_dir = tmp_path / "run"
    fasttrain("run", "resnet9", "--data", data, "--epochs", 1, "--batch-size", 64, "--width", 0.25,
              "--device", "cpu", "--no-compile", "--amp", "off", "--out", run_dir, "--seed", 1)
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "curves.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("model", "dataset", "epochs", "test_acc", "wall_s", "train_imgs_per_s", "device", "params"):
        assert key in summary, key
    assert summary["model"] == "resnet9" and summary["dataset"] == "cifar10" and summary["epochs"] == 1
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["train_imgs_per_s"] > 0 and summary["params"] > 1000
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_s", "imgs_per_s"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"] == "myrtle24" and config["epochs"] == 1 and config["batch_size"] == 64

    import torch

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert "model" in ckpt and ckpt["config"]["model"] == "resnet9"


def test_bad_options_fail_with_named_option(cifar_tensor_slice, tmp_path):
    """Through the installed entry point once (a real process's exit code), then the same command object
    in-process for the other mistakes (each process start costs seconds of imports)."""
    from typer.testing import CliRunner

    from fasttrain.cli import app

    proc = fasttrain("run", "resnet9", "--data", cifar_tensor_slice, "--epochs", -1, "--out", tmp_path / "r",
                     check=False)
    assert proc.returncode == 2 and "--epochs" in proc.stderr
    for args, words in (
        (["run", "nosuchnet", "--data", cifar_tensor_slice], ["nosuchnet"]),
        (["run", "resnet9", "--data", tmp_path / "nothing", "--out", tmp_path / "r2"], ["convert"]),
        (["convert", "cifar10", "--source", tmp_path / "missing", "--out", tmp_path / "d"], ["missing"]),
        (["run", "airbench", "--recipe", "speed94-cpu", "--pipeline", "ffcv", "--data", cifar_tensor_slice,
          "--out", tmp_path / "r3"], ["--alternating-flip", "--pipeline tensor"]),
        (["run", "airbench", "--optimizer", "muon", "--muon-ns-steps", 0, "--data", cifar_tensor_slice,
          "--out", tmp_path / "r4"], ["--muon-ns-steps"]),
    ):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 2 and all(w in res.stderr for w in words), (args, res.stderr)


@pytest.mark.slow
def test_training_learns_on_real_images(cifar_tensor_slice, tmp_path):
    """A few epochs on 300 real images must beat chance clearly on the 100 held-out ones."""
    from fasttrain.config import resolve
    from fasttrain.train import train

    cfg = resolve("airbench", "cpu-quick", dict(data=str(cifar_tensor_slice), epochs=8, batch_size=50,
                                                 out=str(tmp_path / "r"), amp="off", lr=0.5))
    summary = train(cfg, quiet=True)
    assert summary["test_acc"] >= 0.25, summary
