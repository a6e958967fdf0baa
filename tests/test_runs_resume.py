"""Resume is the same run: config.json holds the absolute data path and the dataset's identity (a resume from
another working directory finds the same data; another dataset at that path is refused, naming both), a
damaged config.json is a message, wall_s counts every segment, and `--resume RUN --epochs N` extends a run
whose schedule does not depend on its length (and refuses, with the reason, one that does)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import extract_jpeg_slice
from typer.testing import CliRunner

from fasttrain import checkpoint as ckpt_io
from fasttrain.cli import app
from fasttrain.data.convert import convert
from fasttrain.rundisk import RunDirError
from fasttrain.stopping import RunInterrupted
from fasttrain.rundir import load_run_config
from fasttrain.train import train
from test_runs_folders import tiny_cfg

runner = CliRunner()


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory) -> Path:
    """Another small CIFAR-10 slice (20 train images per class instead of 30): another identity."""
    root = tmp_path_factory.mktemp("other")
    return convert("cifar10", source=extract_jpeg_slice(root / "jpeg", 20, 10), out=root / "c10", log=lambda s: None)


def test_resume_from_another_directory_uses_the_same_data_and_refuses_another(cifar_tensor_slice, other_dataset,
                                                                              tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    for folder, data in ((start, cifar_tensor_slice), (elsewhere, other_dataset)):
        folder.mkdir()
        shutil.copytree(data, folder / "data")  # the same relative path holds a different dataset
    monkeypatch.chdir(start)
    out = tmp_path / "run"
    train(tiny_cfg(Path("data"), out, epochs=1), quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"] == str(start / "data") and saved["data_identity"]["splits"]["train"]["count"] == 300
    (out / "summary.json").unlink()  # as if stopped during the final evaluation
    monkeypatch.chdir(elsewhere)
    summary = train(load_run_config(out), quiet=True, resume=True)
    assert summary["train_samples"] == 100 and summary["steps"] == 2  # the run's own data, not ./data here

    # the dataset at the recorded path is replaced by another one: refused, naming both
    (out / "summary.json").unlink()
    shutil.rmtree(start / "data")
    shutil.copytree(other_dataset, start / "data")
    with pytest.raises(RunDirError, match=r"not the one this run started on: it started on 'cifar10' "
                                          r"\(10 classes, .*train 300.*now holds 'cifar10' .*train 200"):
        train(load_run_config(out), quiet=True, resume=True)


def test_damaged_config_on_resume_is_a_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for text, expected in (('{"model": "resnet9", "epochs": ', "not valid JSON"),
                           ("[1, 2]", "holds a JSON list, expected an object"),
                           ('{"model": "resnet9", "no_such_field": 1}', "is not a run config this fasttrain reads")):
        (run / "config.json").write_text(text)
        result = runner.invoke(app, ["run", "--resume", str(run)])
        assert result.exit_code == 2, result.output
        assert expected in result.output and f"{run / 'config.json'}" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_wall_time_counts_every_segment_of_an_interrupted_and_extended_run(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"

    def stop_in_the_third_epoch() -> None:  # a user's Ctrl-C once two epochs are logged
        while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=stop_in_the_third_epoch, daemon=True).start()
    with pytest.raises(RunInterrupted):
        train(tiny_cfg(cifar_tensor_slice, out, epochs=4), quiet=True)
    stopped = ckpt_io.load(out / "checkpoint.pt")
    resumed = load_run_config(out)
    resumed.epochs = 5  # an interrupted run extended as it resumes (`--resume DIR --epochs 5`)
    summary = train(resumed, quiet=True, resume=True)
    assert summary["steps"] == 10 and json.loads((out / "config.json").read_text())["epochs"] == 5
    # most training happened in the first segment: a wall clock of the last segment alone falls below train_s
    assert summary["wall_s"] >= summary["train_s"]
    assert summary["wall_s"] >= stopped["state"]["run_clock"]["wall_s"] + summary["train_s"] - stopped["train_s"]
    # the first epoch of each segment carries its warm-up: reported apart from the steady rate
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    warm = ckpt_io.load(out / "checkpoint.pt")["state"]["run_clock"]["warmup_epochs"]
    assert warm[0] == 1 and len(warm) == 2 and warm[1] >= 3
    steady = [r for r in rows if r["epoch"] not in warm]
    expected = sum(r["imgs_per_s"] * r["epoch_s"] for r in steady) / sum(r["epoch_s"] for r in steady)
    assert summary["train_imgs_per_s"] == pytest.approx(expected, abs=0.1)
    assert summary["warmup_imgs_per_s"] is not None


def test_resume_with_more_epochs_extends_a_constant_schedule(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=True)
    same = runner.invoke(app, ["run", "--resume", str(out)])
    assert same.exit_code == 2 and "already finished" in same.output and "--epochs N" in same.output
    fewer = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "1"])
    assert fewer.exit_code == 2 and "already finished" in fewer.output
    longer = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--json"])
    assert longer.exit_code == 0, longer.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 4
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("kw, reason", [
    (dict(schedule="onecycle", warmup_frac=0.2), "onecycle schedule anneals the learning rate"),
    (dict(schedule="constant", warmup_frac=0.5), "warmup is a fraction of its planned length"),
    (dict(schedule="constant", lookahead=True), "uses lookahead"),
])
def test_resume_with_more_epochs_is_refused_where_the_schedule_depends_on_the_length(
        kw, reason, cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1, **kw), quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "3"])
    assert result.exit_code == 2 and reason in result.output and "--init-from" in result.output, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(cifar_tensor_slice, tmp_path):
    """Runs saved by an older fasttrain lack the settings added since: their checkpoint and config.json
    have no such key, and the run had the setting's default, so the resume is allowed."""
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=True)
    state = ckpt_io.load(out / "checkpoint.pt")
    assert state["config"]["logger"] is not None  # a recent setting, with its default value
    del state["config"]["logger"]
    ckpt_io.save(out / "checkpoint.pt", state)
    config = json.loads((out / "config.json").read_text())
    del config["logger"]
    (out / "config.json").write_text(json.dumps(config))
    (out / "summary.json").unlink()  # as if stopped during the final evaluation
    summary = train(load_run_config(out), quiet=True, resume=True)
    assert summary["steps"] == 2
    state["config"]["lr"] = 123.0  # a setting the run really had otherwise is still refused
    ckpt_io.save(out / "checkpoint.pt", state)
    (out / "summary.json").unlink()
    with pytest.raises(ckpt_io.CheckpointError, match="different config"):
        train(load_run_config(out), quiet=True, resume=True)
