"""One error style: every user-caused failure exits 2 with one or two lines that name the option or file,
what was expected and what to do; never a traceback. Table-driven; files are built by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_error_table import check_one_error_line

from fasttrain.cli import app
from fasttrain.models import create_model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny converted dataset (8x8 images), a non-run folder, a broken YAML file, a damaged run folder."""
    root = tmp_path_factory.mktemp("cli_errors")
    data = root / "tiny"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"name": "tiny", "shape": [8, 8, 3], "num_classes": 2,
                                                "classes": ["a", "b"], "splits": {}}))
    images = root / "images"
    (images / "a").mkdir(parents=True)
    (root / "bad.yaml").write_text("lr: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    run = root / "damaged_run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    np.save(root / "x.npy", np.zeros(2))
    # checkpoints: a good one, then one damaged field each (plain data, loadable with weights_only=True)
    model = create_model("resnet9", 2, width=0.125)
    good = {"model": model.state_dict(), "config": {"model": "resnet9", "model_kwargs": {"width": 0.125}},
            "classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}
    bad = {"unknown_model": {"config": {"model": "resnet_9"}}, "config_not_dict": {"config": "resnet9"},
           "null_mean": {"mean": None}, "huge_width": {"config": {"model": "resnet9", "model_kwargs": {"width": 200}}},
           "three_classes": {"classes": ["a", "b", "c"]}, "not_weights": {"model": {"w": [1, 2]}},
           "bad_kwarg": {"config": {"model": "resnet9", "model_kwargs": {"activation": "tanh"}}}}
    for name, change in bad.items():
        torch.save({**good, **change}, root / f"{name}.pt")
    return {"root": root, "data": data, "images": images, "run": run}


CASES = [
    # (arguments, words the message must contain)
    (["run", "resnet_9"], ["unknown model 'resnet_9'", "did you mean resnet9"]),
    (["run", "resnet9", "--recipe", "myrtle"], ["--recipe", "did you mean myrtle24"]),
    (["run", "resnet9", "--device", "cudaX"], ["--device", "cuda:N", "'cudaX'"]),
    (["run", "resnet9", "--data", "{data}", "--amp", "fp16", "--device", "cpu"], ["--amp", "fp16 on a CPU",
                                                                                   "--amp bf16"]),
    (["run", "airbench", "--pipeline", "ffcv"], ["--alternating-flip", "--no-alternating-flip"]),
    (["run", "resnet9", "--epochs", "-1"], ["--epochs", "must be > 0"]),
    (["run", "resnet9", "--schedule", "cosin"], ["--schedule", "did you mean cosine"]),
    (["run", "resnet9", "--milestones", "10,x"], ["--milestones", "numbers separated by commas"]),
    (["run", "resnet9", "--set", "lrr=1"], ["--set", "unknown setting 'lrr'", "did you mean lr"]),
    (["run", "resnet9", "--set", "epochs=abc"], ["--set epochs", "expected a number"]),
    (["run", "resnet9", "--set", "lookahead"], ["--set", "FIELD=VALUE"]),
    (["run", "resnet9", "--data", "{data}", "--cutout", "1000"], ["--cutout", "larger than the 8x8 images"]),
    (["run", "resnet9", "--config", "{root}/missing.yaml"], ["--config", "missing.yaml", "--print-config"]),
    (["run", "resnet9", "--config", "{root}/bad.yaml"], ["--config", "bad.yaml", "not valid YAML"]),
    (["run", "resnet9", "--config", "{root}/list.yaml"], ["--config", "expected a mapping"]),
    (["run", "resnet9", "--config", "{root}/x.npy"], ["--config", ".yaml, .yml, .toml or .json"]),
    (["run", "densenet100_k12", "--drop-path", "0.1"], ["--drop-path", "does not take", "it takes"]),
    (["run", "resnet18_attn", "--attention", "all"], ["--attention", "both | channel | spatial"]),
    (["run", "resnet9", "--embed-lr", "0.1"], ["--embed-lr", "only with --task retrieval"]),
    (["run"], ["MODEL: missing"]),
    (["run", "resnet9", "--data", "{root}/tinny"], ["--data", "no such directory", "did you mean", "tiny",
                                                   "fasttrain convert"]),
    (["run", "--resume", "{run}"], ["--resume", "config.json", "not valid JSON"]),
    (["run", "--resume", "{run}", "--lr", "1"], ["--resume", "drop --lr"]),
    (["convert", "cifar1O"], ["DATASET", "did you mean cifar10"]),
    (["convert", "imagefolder", "--source", "{images}", "--size", "60000"], ["--size", "[8, 1024]", "--max-side"]),
    (["eval", "{root}"], ["no checkpoint.pt", "fasttrain run"]),
    (["eval", "{root}", "--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    (["eval", "{root}", "--split", "valid"], ["--split", "did you mean val"]),
    (["eval", "{root}/x.npy", "--checkpoint", "best"], ["--checkpoint best", "run directory"]),
    (["eval", "{root}", "--tta", "flips"], ["--tta", "did you mean flip"]),
    (["report", "{root}"], ["none of the 1 folder", "summary.json"]),
    (["report", "{run}", "--plot", "{root}/out.txt"], ["--plot", ".png"]),
    (["recipes", "myrtle"], ["--recipe", "did you mean myrtle24"]),
    (["zoo", "--models", "resnet50bb"], ["--models", "did you mean resnet50b"]),
    (["predict", "{root}/nothing.pt", "{root}/x.npy"], ["nothing.pt", "no such run directory or checkpoint file"]),
    (["eval", "{root}/unknown_model.pt"], ["unknown_model.pt", "unknown model 'resnet_9'", "did you mean resnet9"]),
    (["eval", "{root}/config_not_dict.pt"], ["config_not_dict.pt", "not a run's settings"]),
    (["eval", "{root}/null_mean.pt"], ["null_mean.pt", "'mean' must be 3 per-channel numbers"]),
    (["eval", "{root}/huge_width.pt"], ["huge_width.pt", "weights do not fit resnet9"]),  # nothing allocated
    (["eval", "{root}/three_classes.pt"], ["three_classes.pt", "weights do not fit resnet9 with 3 classes"]),
    (["eval", "{root}/not_weights.pt"], ["not_weights.pt", "not a state dict of tensors"]),
    (["predict", "{root}/bad_kwarg.pt", "{root}/x.npy"], ["bad_kwarg.pt", "--activation", "relu"]),
]


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_user_errors_are_one_clear_line(files, args, words):
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    message = check_one_error_line(res.exit_code, res.stderr, res.output)
    for word in words:
        assert word in message, (word, message)


def test_unknown_option_suggests_and_a_bug_asks_for_a_report(tmp_path):
    """Through the real entry point: click's own usage errors keep their suggestion; an unexpected
    exception prints its traceback and asks for a report (exit 1)."""
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "run", "resnet9", "--lr-rate", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--lr-rate" in proc.stderr and "--lr" in proc.stderr and not proc.stdout
    bug = ("import sys, fasttrain.cli as c\n"
           "def boom(*a, **k): raise ZeroDivisionError('x')\n"
           "c.load_config_file = boom\n"
           "sys.argv = ['fasttrain', 'run', 'resnet9', '--config', 'x.yaml']\n"
           "c.main()\n")
    proc = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "please report" in proc.stderr
