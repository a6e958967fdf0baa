"""timm models answer option mistakes as zoo models do: `timm/resnet18 --width 0.5` and `--set
model_kwargs.foo=1` are one `error:` line and exit 2 before any data is read (the model is built on the meta
device to check), options timm takes pass; `fasttrain run timm/resnet18 --help` shows the model's defaults
instead of calling it unknown."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fasttrain.cli import app

pytest.importorskip("timm")
runner = CliRunner()


@pytest.mark.parametrize("args, named", [
    (["--width", "0.5"], "--width (model_kwargs.width)"),
    (["--set", "model_kwargs.foo=1"], "model_kwargs.foo"),
])
def test_an_option_timm_refuses_is_one_error(args, named, cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "timm/resnet18", *args, "--data", str(cifar_tensor_slice), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith("error: model 'timm/resnet18': timm's model refuses the options") and named in errors[0]
    assert not out.exists()


def test_options_timm_takes_pass(cifar_tensor_slice):
    result = runner.invoke(app, ["run", "timm/resnet18", "--set", "model_kwargs.drop_path_rate=0.1", "--pretrained",
                                 "--data", str(cifar_tensor_slice), "--print-config"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed["model_kwargs"] == {"drop_path_rate": 0.1, "pretrained": True}


def test_help_of_a_timm_model():
    result = runner.invoke(app, ["run", "timm/resnet18", "--help"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "timm/resnet18 has no recipe of its own" in text, result.output
    assert "unknown model" not in text
    misspelt = runner.invoke(app, ["run", "timm/resnt18", "--help"])
    assert "unknown timm model 'resnt18'" in " ".join(misspelt.output.split())
