"""Small things said right, through the real entry points: `eval --subset` draws as `run --test-subset` does
(so it reproduces the run's test accuracy), "1 epoch" and epochs as 2 (not 2.0), the device as
"cpu (1 thread)" or "cpu (1 thread each, 2 processes)", and errors of the Python API naming its arguments
(out=..., force=True) where the command line names its options (--out, --force)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import fasttrain
from fasttrain.cli import app

TINY = ["--recipe", "cpu-quick", "--epochs", "1", "--batch-size", "50", "--train-subset", "100", "--test-subset",
        "30", "--width", "0.25", "--threads", "1", "--no-tensorboard"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def run(cifar_tensor_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("rough") / "run"
    res = invoke("run", "airbench", "--data", cifar_tensor_slice, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out, res.stdout


def test_epochs_and_the_device_are_said_plainly(run):
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu (1 thread)"
    assert re.search(r"│ epochs\s+│\s+1 │", stdout) and "1.0" not in stdout.split("run summary")[1].split("test_acc")[0]
    assert "| device cpu (1 thread) |" in stdout
    from fasttrain.runtime import device_name
    from fasttrain.words import count

    assert device_name(torch.device("cpu"), 2).endswith(" each, 2 processes)")

    assert (count(1, "epoch"), count(2.0, "epoch"), count(2.5, "epoch")) == ("1 epoch", "2 epochs", "2.5 epochs")
    assert count(1, "process", "processes") == "1 process"


def test_eval_subset_draws_the_images_the_run_tested_on(run):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    res = invoke("eval", out, "--subset", 30, "--json")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["samples"] == summary["test_samples"] == 30
    assert m["acc"] == pytest.approx(summary["test_acc"])  # the same 30 images, the same TTA
    assert json.loads(invoke("eval", out, "--subset", 10, "--json").stdout)["samples"] == 10
    res = invoke("eval", out, "--subset", 0)
    assert res.exit_code == 2 and res.stderr.strip() == "error: --subset: must be >= 1 (images of the split), got 0"


def test_python_api_errors_name_its_arguments(run, cifar_tensor_slice, tmp_path):
    out, _ = run
    with pytest.raises(Exception) as caught:
        fasttrain.fit("airbench", cifar_tensor_slice, out=out, recipe="cpu-quick", epochs=1, verbose=False)
    message = str(caught.value)
    assert message.startswith(f"out={str(out)!r}: holds a finished run") and "pass force=True" in message
    assert "--" not in message
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_text("not ours")
    with pytest.raises(Exception, match=r"^out='.*theirs.safetensors': exists .* pass force=True to replace it"):
        fasttrain.export(out, "safetensors", theirs)
    # the command line, running the same code, names its options
    res = invoke("export", out, "--format", "safetensors", "--out", theirs)
    assert res.exit_code == 2 and f"--out {theirs}: exists" in res.stderr and "pass --force" in res.stderr
    res = invoke("run", "airbench", "--data", cifar_tensor_slice, "--out", out, *TINY)
    assert res.exit_code == 2 and f"--out {out}: holds a finished run" in res.stderr and "--force" in res.stderr


def test_a_one_class_slice_of_sorted_arrays_is_explained(cifar_tensor_slice):
    """A converted dataset's arrays are stored sorted by class: X[:N] of them may hold one class, and fit
    says so with the way out, before any training."""
    import numpy as np

    from fasttrain.config import ConfigError

    x, y = (np.load(cifar_tensor_slice / f"train_{k}.npy") for k in ("images", "labels"))
    xt, yt = (np.load(cifar_tensor_slice / f"test_{k}.npy") for k in ("images", "labels"))
    assert len(np.unique(y[:30])) == 1  # as stored
    with pytest.raises(ConfigError, match=r"train_labels holds only class 0 .* sorted by class.*permutation"):
        fasttrain.fit("airbench", (x[:30], y[:30], xt, yt), epochs=1, verbose=False)
    # the documented way out gives every class
    idx = np.random.default_rng(0).permutation(len(x))[:30]
    assert len(np.unique(y[idx])) > 5
    # and the documented prediction example takes images of several classes
    picked = yt[np.linspace(0, len(yt) - 1, 8).astype(int)]
    assert len(np.unique(picked)) >= 6
