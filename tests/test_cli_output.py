"""Output for machines and people, on one real (tiny) run: --json leaves exactly one JSON document on
stdout, piped logs are never wrapped, one spelling of amp, accuracy in percent for people and fractions in
files; `eval RUN_DIR` (data and TTA from the run), `report` (skips non-runs, plots only when asked),
`predict` on a directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fasttrain.cli import app


@pytest.fixture(scope="module")
def json_run(cifar_tensor_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli_output") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fasttrain", "run", "airbench", "--recipe", "cpu-quick", "--data", str(cifar_tensor_slice),
         "--epochs", "1", "--batch-size", "50", "--train-subset", "100", "--test-subset", "50", "--width", "0.25",
         "--amp", "bf16", "--threads", "1", "--no-tensorboard", "--out", str(run_dir), "--json"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_json_stdout_is_one_document_and_logs_are_unwrapped(json_run):
    run_dir, proc = json_run
    assert len(proc.stdout.strip().splitlines()) == 1
    summary = json.loads(proc.stdout)
    assert summary == json.loads((run_dir / "summary.json").read_text())
    header = next(line for line in proc.stderr.splitlines() if " | device " in line)
    assert len(header) > 80 and "params" in header and "recipe cpu-quick" in header  # one line, piped
    # amp: one spelling (bf16 | fp16 | off) in the header and the summary
    assert "| amp bf16 |" in header and summary["amp"] == "bf16"
    # accuracy: percent for people, fractions in files
    epoch_line = next(line for line in proc.stderr.splitlines() if line.startswith("epoch"))
    assert "train_acc" in epoch_line and "%" in epoch_line
    assert 0 <= summary["test_acc"] <= 1
    assert all(0 <= json.loads(r)["train_acc"] <= 1 for r in (run_dir / "metrics.jsonl").read_text().splitlines())
    # config.json records what ran: --device auto and threads resolved
    config = json.loads((run_dir / "config.json").read_text())
    assert config["device"] in ("cpu", "cuda:0") and config["threads"] == 1 and config["amp"] == "bf16"


def test_eval_takes_a_run_directory(json_run):
    run_dir, _ = json_run
    config = json.loads((run_dir / "config.json").read_text())
    res = invoke("eval", run_dir, "--json")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    # the run's data and TTA by default, so the accuracy is the one the run reported
    assert m["tta"] == config["tta"] == "flip_translate" and m["data"] == config["data"]
    assert m["checkpoint"] == str(run_dir / "checkpoint.pt")
    assert m["acc"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["test_acc"])
    res = invoke("eval", run_dir, "--checkpoint", "best")
    assert res.exit_code == 2 and "--val-split" in res.stderr and "--checkpoint last" in res.stderr
    res = invoke("eval", run_dir, "--split", "val")
    assert res.exit_code == 2 and "carved from train" in res.stderr
    res = invoke("eval", run_dir, "--checkpoint", "last", "--tta", "none")
    assert res.exit_code == 0 and "tta none" in res.stdout and "acc" in res.stdout


def test_report_skips_non_runs_and_plots_only_where_asked(json_run, tmp_path, monkeypatch):
    run_dir, _ = json_run
    monkeypatch.chdir(tmp_path)
    failed_start = tmp_path / "failed"
    failed_start.mkdir()
    (failed_start / "config.json").write_text("{}")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "summary.json").write_text("{truncated")
    res = invoke("report", run_dir, failed_start, damaged, "--json", tmp_path / "rows.json")
    assert res.exit_code == 0, res.output
    assert "skipping" in res.stderr and str(failed_start) in res.stderr
    assert str(damaged / "summary.json") in res.stderr  # the malformed file named, the run left out
    assert "airbench" in res.stdout and not list(tmp_path.glob("*.png"))  # no picture unasked
    assert [r["run"] for r in json.loads((tmp_path / "rows.json").read_text())["rows"]] == ["run"]
    res = invoke("report", run_dir, "--plot", tmp_path / "acc.svg")
    assert res.exit_code == 0 and (tmp_path / "acc.svg").read_text().lstrip().startswith("<?xml")
    assert "wrote" in res.stderr


def test_predict_takes_a_folder_of_images_and_names_one_without(json_run, tmp_path):
    from PIL import Image

    run_dir, _ = json_run
    res = invoke("predict", run_dir / "checkpoint.pt", tmp_path)
    assert res.exit_code == 2 and f"{tmp_path}: a folder without image files" in res.stderr
    for name in ("b.png", "a.jpg"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    res = invoke("predict", run_dir / "checkpoint.pt", tmp_path, "--json", "--top-k", "2")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png"] and all(len(r["top"]) == 2 for r in rows)
