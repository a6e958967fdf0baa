"""`fasttrain run --resume RUN --epochs N` on a constant schedule with the default warmup_frac (0.2): the
warm-up, a share of the length, still ends within the epochs already done, so the run extends and every new
step runs at the peak lr while the steps taken keep theirs; a length whose warm-up would reach past the
epochs already done is refused with the longest length that works."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.config import RunConfig
from fasttrain.train import train
from test_runs_folders import tiny_cfg

runner = CliRunner()


def lrs(run) -> list[float]:
    return [float(row["lr"]) for row in csv.DictReader(open(run / "lr.csv"))]


def test_constant_schedule_with_the_default_warmup_extends(cifar_tensor_slice, tmp_path):
    default_warmup = RunConfig().warmup_frac
    assert default_warmup == 0.2
    out = tmp_path / "run"
    cfg = tiny_cfg(cifar_tensor_slice, out, epochs=2, batch_size=25, lr=0.05, warmup_frac=default_warmup)
    train(cfg, quiet=True)  # 4 steps an epoch: 8 steps, the first int(8 * 0.2) = 1 of them warming up
    before = lrs(out)
    assert len(before) == 8 and before[0] < 0.05 and before[1:] == pytest.approx([0.05] * 7)

    longer = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "4"])
    assert longer.exit_code == 0, longer.output
    after = lrs(out)
    assert after[:8] == before  # the steps taken keep their learning rates
    assert after[8:] == pytest.approx([0.05] * 8)  # the warm-up over 16 steps (3) ended long before step 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["steps"] == 16

    state = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    too_long = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "21"])
    assert too_long.exit_code == 2, too_long.output
    error = [line for line in too_long.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "would run until epoch 4.2, past the 4 planned before" in error[0]
    assert "extend to at most 20 epochs" in error[0] and "--init-from" in error[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == state  # nothing touched
