"""timm models as `timm/<name>`: built untrained with the data's classes and a stride-1 stem for small
images, trained one tiny epoch on the real CIFAR-10 slice (Python API and CLI), loaded back; clear errors
for a misspelt name and a missing timm; on a GPU, compiled bf16 channels_last training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import fasttrain
from fasttrain.config import ConfigError
from fasttrain.models import create_model, get_entry

timm = pytest.importorskip("timm")

TINY_RUN = dict(epochs=1, batch_size=50, train_subset=100, test_subset=50, device="cpu", amp="off",
                compile=False, tta="none")


@pytest.fixture(scope="module")
def timm_fit(cifar_tensor_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("timm") / "run"
    return fasttrain.fit("timm/test_resnet", cifar_tensor_slice, verbose=False, out=str(out), lr=0.05, **TINY_RUN)


def test_timm_model_trains_evaluates_and_loads(timm_fit, cifar_tensor_slice):
    summary = timm_fit.summary
    assert summary["model"] == "timm/test_resnet" and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["test_samples"] == 50
    untouched = timm.create_model("test_resnet", num_classes=10, pretrained=False)
    assert summary["params"] == sum(p.numel() for p in untouched.parameters())  # the stem change adds none
    net = timm_fit.model.net
    assert isinstance(net.maxpool, nn.Identity) and net.conv1[0].stride == (1, 1)
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)  # not 1x1
    x = torch.from_numpy(np.load(cifar_tensor_slice / "test_images.npy")[:4])
    loaded = fasttrain.load(timm_fit.run_dir, device="cpu")  # rebuilt by name from the checkpoint
    with torch.no_grad():
        assert torch.equal(loaded(x), timm_fit.model(x))


def test_small_input_stems():
    resnet = create_model("timm/test_resnet", 10)
    assert isinstance(resnet.maxpool, nn.Identity) and resnet.conv1[0].stride == (1, 1)
    kept = create_model("timm/test_resnet", 10, small_input=False)
    assert isinstance(kept.maxpool, nn.MaxPool2d) and kept.conv1[0].stride == (2, 2)
    effnet = create_model("timm/test_efficientnet", 10)
    assert effnet.conv_stem.stride == (1, 1)
    assert create_model("timm/test_resnet", 7, drop_rate=0.1).get_classifier().out_features == 7  # timm kwargs


def test_timm_names_and_install_hint(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown timm model .resnet_18.*did you mean timm/resnet18"):
        fasttrain.fit("timm/resnet_18", "data/not-needed-yet")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(KeyError, match=r"needs timm, which is not installed here: pip install timm"):
        get_entry("timm/resnet18")


def test_cli_runs_a_timm_model(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fasttrain", "run", "timm/test_resnet", "--data", str(cifar_tensor_slice),
           "--epochs", "1", "--batch-size", "50", "--train-subset", "100", "--test-subset", "50",
           "--device", "cpu", "--amp", "off", "--no-compile", "--tta", "none", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "timm/test_resnet" and summary["test_samples"] == 50


@pytest.mark.gpu
def test_timm_model_compiled_bf16_channels_last_on_gpu(cifar_tensor_slice, tmp_path):
    result = fasttrain.fit("timm/resnet18", cifar_tensor_slice, verbose=False, out=str(tmp_path / "run"),
                           **dict(TINY_RUN, device="cuda", amp="bf16", compile=True, train_subset=300,
                                  test_subset=100))
    assert result.summary["compile"] and result.summary["amp"] == "bfloat16"
    assert 0.0 <= result.summary["test_acc"] <= 1.0
    assert result.model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
