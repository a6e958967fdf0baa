"""A user's own model by name: `fasttrain run path/to/file.py:ClassName` (and `model:` in a config file)
trains, records the file's absolute path and loads back; a wrong file, class or option is one named error;
an installed package's `fasttrain.models` entry points register models (a distribution on sys.path, as pip
leaves one); `fasttrain.create_model` / `fasttrain.list_models` at the top level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fasttrain
from fasttrain.cli import app

TINY_ARGS = ["--epochs", "1", "--batch-size", "50", "--train-subset", "100", "--test-subset", "50", "--device",
             "cpu", "--amp", "off", "--no-compile", "--tta", "none", "--no-tensorboard", "--threads", "1"]
TINY_NET = '''
import torch.nn as nn
from tiny_layers import conv_bn  # a neighbour of this file, imported as a script would


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class NoClassCount(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()


not_a_model = 3
'''
TINY_LAYERS = '''
import torch.nn as nn


def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
'''


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "tiny_layers.py").write_text(TINY_LAYERS)
    (folder / "tiny_net.py").write_text(TINY_NET)
    (folder / "broken.py").write_text("import torch.nn as nn\nWIDTH = 1 / 0\n")
    return folder / "tiny_net.py"


def the_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_run_a_model_file_then_load_it_back(model_file, cifar_tensor_slice, tmp_path, monkeypatch):
    monkeypatch.chdir(model_file.parent)  # a relative path, as typed
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "tiny_net.py:TinyNet", "--set", "model_kwargs.width=4", "--data",
                                      str(cifar_tensor_slice), "--out", str(out), *TINY_ARGS])
    assert result.exit_code == 0, result.output[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == f"{model_file}:TinyNet" and config["model_kwargs"] == {"width": 4}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == 3 * 4 * 9 + 2 * 4 + 4 * 10 + 10  # conv, BN, fc: the file's class, width 4
    monkeypatch.chdir(tmp_path)  # loads from elsewhere: the absolute path was recorded
    loaded = fasttrain.load(out, device="cpu")
    assert type(loaded.net).__name__ == "TinyNet" and loaded.net.fc.in_features == 4
    images = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    assert loaded(images).shape == (2, 10)


def test_a_config_file_names_a_model_file(model_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model_file}:TinyNet\nmodel_kwargs:\n  width: 6\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--print-config"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed["model"] == f"{model_file}:TinyNet" and printed["model_kwargs"] == {"width": 6}


@pytest.mark.parametrize("name, extra, expected", [
    ("missing.py:TinyNet", [], "no such file missing.py"),
    ("tiny_net.py:TinyNt", [], "defines no 'TinyNt'; did you mean TinyNet?; its nn.Module classes: TinyNet, "
                               "NoClassCount"),
    ("tiny_net.py:not_a_model", [], "not_a_model in tiny_net.py is a int, not an nn.Module class"),
    ("tiny_net.py:NoClassCount", [], "NoClassCount.__init__ must take num_classes"),
    ("broken.py:Net", [], "importing broken.py raised ZeroDivisionError: division by zero"),
    ("tiny_net.py:TinyNet", ["--set", "model_kwargs.depth=3"], "does not take model_kwargs.depth; it takes: width"),
])
def test_wrong_file_class_or_option_is_one_named_error(model_file, cifar_tensor_slice, tmp_path, monkeypatch, name,
                                                        extra, expected):
    monkeypatch.chdir(model_file.parent)
    result = CliRunner().invoke(app, ["run", name, *extra, "--data", str(cifar_tensor_slice), "--out",
                                      str(tmp_path / "run"), *TINY_ARGS])
    assert result.exit_code == 2, result.output
    error = the_error(result.output)
    assert error.startswith(f"error: model {name!r}" if not extra else "error: model") and expected in error, error
    assert not (tmp_path / "run").exists()


def test_run_help_of_a_model_file(model_file):
    result = CliRunner().invoke(app, ["run", f"{model_file}:TinyNet", "--help"])
    text = " ".join(result.output.split())  # as wrapped at any width
    assert result.exit_code == 0 and f"{model_file}:TinyNet has no recipe of its own" in text, result.output
    assert "unknown model" not in text


PLUGIN = '''
import torch.nn as nn


def build_demo(num_classes: int, hidden: int = 5) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
'''
PLUGIN_REGISTRY = '''
import torch.nn as nn

from fasttrain.models import register_model


@register_model("demo_pool", family="demo")
def demo_pool(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))
'''


def test_an_installed_package_registers_models_by_entry_point(tmp_path):
    site = tmp_path / "site"
    dist = site / "fasttrain_demo_models-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fasttrain-demo-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fasttrain.models]\ndemo_net = demo_plugin:build_demo\n"
                                           "demo = demo_plugin_registry\n")
    (site / "demo_plugin.py").write_text(PLUGIN)
    (site / "demo_plugin_registry.py").write_text(PLUGIN_REGISTRY)
    script = textwrap.dedent("""
        import json, torch, fasttrain
        net = fasttrain.create_model("demo_net", num_classes=3, hidden=7)
        pool = fasttrain.create_model("demo_pool", num_classes=4)
        x = torch.zeros(2, 3, 8, 8)
        print(json.dumps({"listed": fasttrain.list_models("demo*"), "net": list(net(x).shape),
                          "hidden": net[3].in_features, "pool": list(pool(x).shape),
                          "zoo": "resnet9" in fasttrain.list_models()}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ["PYTHONPATH"]])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"listed": ["demo_net", "demo_pool"], "net": [2, 3], "hidden": 7, "pool": [2, 4], "zoo": True}
    cli = subprocess.run([sys.executable, "-m", "fasttrain", "run", "demo_net", "--set", "model_kwargs.hidden=9",
                          "--print-config"], capture_output=True, text=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout)["model_kwargs"] == {"hidden": 9}
