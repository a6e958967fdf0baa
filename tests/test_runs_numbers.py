"""Honest numbers: config.json says what ran (amp, threads, monitor, absolute data path), amp has one spelling
and accuracies are fractions in files and percentages in text, the first epoch is marked as warm-up, the bar
shows a whole-run ETA, a full disk while writing metrics ends with a message, fp16 on a CPU is refused."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.progress import EpochProgress
from fasttrain.rundisk import RunDirError
from fasttrain.runlog import RunLog
from fasttrain.train import train
from test_runs_folders import tiny_cfg

runner = CliRunner()


def test_config_json_records_what_ran_and_text_uses_percentages(cifar_tensor_slice, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(tiny_cfg(cifar_tensor_slice, out, amp="auto", threads=None, monitor="val_loss"), quiet=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["amp"] in ("bf16", "off") and saved["amp"] == summary["amp"]  # never "auto", never "bfloat16"
    assert saved["threads"] == torch.get_num_threads()
    assert saved["monitor"] is None  # no val split: nothing is monitored
    assert saved["data"] == os.path.abspath(cifar_tensor_slice) and saved["data_identity"]["name"] == "cifar10"
    # fractions in files ...
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["train_acc"] <= 1 for r in rows) and 0 <= summary["test_acc"] <= 1
    # ... percentages in text, the first epoch marked as warm-up, an ETA for the rest of the run
    printed = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in printed if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert "(warm-up)" in epoch_lines[0] and "run ETA" in epoch_lines[0] and "(warm-up)" not in epoch_lines[1]
    assert f"test_acc {100 * rows[-1]['test_acc']:.2f}%" in epoch_lines[1]
    assert f"amp {saved['amp']} " in next(line for line in printed if line.startswith("resnet9 on cifar10"))
    # with a val split the monitor stays
    val = tmp_path / "val"
    train(tiny_cfg(cifar_tensor_slice, val, epochs=1, val_split=20, monitor="val_loss"), quiet=True)
    assert json.loads((val / "config.json").read_text())["monitor"] == "val_loss"


def test_live_bar_shows_warm_up_and_a_whole_run_eta(monkeypatch):
    """The run ETA uses the last steady epoch's pace, never the warm-up epoch's. The progress clock is a
    fake one the test advances, so the numbers are exact whatever the machine's load."""
    import fasttrain.progress as progress_module

    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    progress = EpochProgress(3, 10)
    progress.console = Console(file=io.StringIO(), force_terminal=True, width=200)
    progress.live = True
    row = dict(epoch=1, train_loss=1.0, train_acc=0.5, test_acc=None, epoch_s=0.1, imgs_per_s=1000.0)
    progress.start_epoch(0)
    now[0] += 5.0  # a slow warm-up: 1 s a step
    progress.update(5, 1.0, 0.5, 1000.0)
    first = progress.progress.tasks[0].fields
    assert "warming up" in first["stats"] and first["run_eta"].startswith("run ETA")
    assert progress.run_eta(5) == 25 * 1.0  # no steady epoch yet: the current pace, 25 steps left
    now[0] += 5.0
    progress.end_epoch(row)
    progress.start_epoch(1)
    now[0] += 0.2  # the steady pace: 0.02 s a step
    progress.end_epoch({**row, "epoch": 2})
    progress.start_epoch(2)
    assert progress.run_eta(5) == pytest.approx(5 * 0.02)  # 5 steps left at the steady pace
    progress.update(5, 1.0, 0.5, 1000.0)
    assert "warming up" not in progress.progress.tasks[0].fields["stats"]
    assert "acc 50.0%" in progress.progress.tasks[0].fields["stats"]
    progress.end_epoch({**row, "epoch": 3})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to fill a disk")
def test_full_disk_while_writing_metrics_is_a_message(cifar_tensor_slice, tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, from the kernel
    with pytest.raises(RunDirError, match="could not write .*metrics.jsonl: the disk is full; no checkpoint"):
        log.log({"epoch": 1, "train_loss": 1.0})
    # a run resumed on that disk: exit 2 and one message that names the intact checkpoint, no traceback
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=True)
    (out / "summary.json").unlink()
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to("/dev/full")
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 2, result.output
    assert "the disk is full; the last checkpoint" in result.output and "is intact" in result.output
    assert not isinstance(result.exception, OSError)


def test_fp16_on_a_cpu_is_refused_with_the_reason(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "resnet9", "--data", str(cifar_tensor_slice), "--out", str(out),
                                 "--device", "cpu", "--amp", "fp16"])
    assert result.exit_code == 2 and "--amp: fp16 on a CPU" in result.output and "1000x slower" in result.output
    assert not out.exists()
