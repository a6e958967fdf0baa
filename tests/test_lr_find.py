"""`fasttrain lr-find`: the smoothing and the two suggestions on curves whose answer is known, then the
command on the real CIFAR-10 slice: an exponential sweep, a curve that falls then diverges, suggestions
inside the sweep, a plot and a JSON written under the output rule, and a `--lr X` that `fasttrain run` takes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.lr_find import lr_schedule, smooth, suggest
from fasttrain.outputs import written_by_fasttrain

runner = CliRunner()


def test_schedule_smoothing_and_suggestions_on_known_curves():
    lrs = lr_schedule(1e-5, 1.0, 51)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** 0.1)  # evenly spaced in log lr
    assert np.allclose(smooth([2.0] * 10), 2.0)  # bias correction: no ramp up from 0
    # loss = 2 - tanh(log10(lr) + 3) until the minimum at 1e-1, rising after: steepest at lr 1e-3
    x = np.log10(lrs)
    curve = np.where(x <= -1, 2 - np.tanh(x + 3), 2 - np.tanh(2) + (x + 1) ** 2)
    found = suggest(lrs, curve)
    assert found["steepest"] == pytest.approx(1e-3, rel=0.01)
    assert found["min_loss_lr"] == pytest.approx(1e-1, rel=0.01) and found["min_over_10"] == pytest.approx(1e-2)
    assert found["suggested"] == found["steepest"]
    falling_only_at_start = suggest(lrs, np.linspace(0, 1, 51))  # the minimum is the first point
    assert falling_only_at_start["steepest"] is None and falling_only_at_start["suggested"] == pytest.approx(1e-6)


def test_lr_find_command_on_real_images(cifar_tensor_slice, tmp_path):
    out = tmp_path / "lrf"
    result = runner.invoke(app, ["lr-find", "resnet9", "--data", str(cifar_tensor_slice), "--set",
                                 "model_kwargs.width=0.25", "--batch-size", "50", "--device", "cpu", "--steps", "40",
                                 "--start-lr", "1e-4", "--end-lr", "100", "--out", str(out), "--set", "threads=1"])
    assert result.exit_code == 0, result.output
    suggested = float(re.search(r"^suggested: --lr (\S+)$", result.output, re.M).group(1))
    saved = json.loads((out / "lr_find.json").read_text())
    lrs, losses = np.array(saved["lr"]), np.array(saved["loss"])
    assert saved["writer"] == "fasttrain" and written_by_fasttrain(out / "lr_find.png")
    assert np.allclose(lrs[1:] / lrs[:-1], (100 / 1e-4) ** (1 / 39))
    assert len(losses) == saved["steps"] <= 40 and np.isfinite(losses[:-1]).all()
    assert saved["stopped_early"] == (saved["steps"] < 40)
    assert 1e-4 <= saved["suggested"] <= 100 and suggested == pytest.approx(saved["suggested"], rel=1e-2)
    assert saved["min_over_10"] == pytest.approx(saved["min_loss_lr"] / 10)
    if saved["steepest"] is not None:
        assert saved["steepest"] <= saved["min_loss_lr"]
    assert min(saved["smoothed"]) < saved["smoothed"][0]  # the loss fell somewhere in the sweep
    check = runner.invoke(app, ["run", "resnet9", "--lr", f"{suggested:g}", "--print-config"])
    assert check.exit_code == 0 and f'"lr": {float(f"{suggested:g}")}' in check.output, check.output


def test_lr_find_refuses_bad_input_in_one_line(cifar_tensor_slice, tmp_path):
    base = ["lr-find", "resnet9", "--data", str(cifar_tensor_slice), "--device", "cpu"]
    result = runner.invoke(app, [*base, "--start-lr", "1", "--end-lr", "0.1", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "need 0 < start-lr < end-lr" in result.output, result.output
    (tmp_path / "file").write_text("mine")
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
    assert (tmp_path / "file").read_text() == "mine"
