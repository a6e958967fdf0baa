"""Starting from weights: `--init-from` copies a run's weights (strict about the architecture, the head
re-initialised for another class count, said in the log), and a checkpoint whose config does not describe
its weights is refused before the model is allocated."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fasttrain import checkpoint as ckpt_io
from fasttrain.cli import app
from fasttrain.data.convert import convert
from fasttrain.inference import load_checkpoint
from fasttrain.train import train
from test_runs_folders import tiny_cfg

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(cifar_tensor_slice, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "source"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1, lr=0.2), quiet=True)
    return out


@pytest.fixture(scope="module")
def five_classes(cifar_jpeg_slice, tmp_path_factory) -> Path:
    """The first five CIFAR-10 classes as an image folder dataset."""
    root = tmp_path_factory.mktemp("five")
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (cifar_jpeg_slice / split).iterdir())[:5]:
            shutil.copytree(cifar_jpeg_slice / split / cls, root / "jpeg" / split / cls)
    return convert("imagefolder", source=root / "jpeg", out=root / "five", name="five", log=lambda s: None)


def weights(run: Path) -> dict:
    return ckpt_io.load(run / "checkpoint.pt")["model"]


def test_init_from_copies_the_weights(trained, cifar_tensor_slice, tmp_path, capsys):
    out = tmp_path / "tuned"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1, lr=1e-9, init_from=str(trained)), quiet=False)
    assert f"initial weights: {trained / 'checkpoint.pt'} (model weights)" in capsys.readouterr().out
    before, after = weights(trained), weights(out)
    convs = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert convs and all(torch.allclose(before[k], after[k], atol=1e-6) for k in convs)
    fresh = tmp_path / "fresh"
    train(tiny_cfg(cifar_tensor_slice, fresh, epochs=1, lr=1e-9), quiet=True)
    assert not torch.allclose(before[convs[0]], weights(fresh)[convs[0]], atol=1e-3)


def test_init_from_another_class_count_reinitialises_the_head(trained, five_classes, tmp_path, capsys):
    out = tmp_path / "five"
    train(tiny_cfg(five_classes, out, epochs=1, lr=1e-9, train_subset=50, test_subset=20,
                   init_from=str(trained / "checkpoint.pt")), quiet=False)
    assert "head re-initialised for 5 classes (was 10): head.2.weight" in capsys.readouterr().out
    before, after = weights(trained), weights(out)
    assert after["head.2.weight"].shape[0] == 5
    assert torch.allclose(before["features.0.0.weight"], after["features.0.0.weight"], atol=1e-6)


def test_init_from_another_architecture_is_refused_before_training(trained, cifar_tensor_slice, tmp_path):
    out = tmp_path / "wider"
    result = runner.invoke(app, ["run", "resnet9", "--width", "0.5", "--data", str(cifar_tensor_slice), "--out",
                                 str(out), "--device", "cpu", "--init-from", str(trained)])
    assert result.exit_code == 2, result.output
    assert "the weights do not fit this model" in result.output and "pass the same model" in result.output
    assert not out.exists()
    missing = runner.invoke(app, ["run", "resnet9", "--data", str(cifar_tensor_slice), "--out", str(out),
                                  "--device", "cpu", "--init-from", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "--init-from" in missing.output and "no such file" in missing.output
    # its own weights with --force: refused before --force could delete them
    before = (trained / "checkpoint.pt").read_bytes()
    own = runner.invoke(app, ["run", "resnet9", "--width", "0.25", "--data", str(cifar_tensor_slice), "--out",
                              str(trained), "--force", "--device", "cpu", "--init-from", str(trained)])
    assert own.exit_code == 2 and "whose files --force replaces" in own.output, own.output
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_checkpoint_config_is_checked_against_its_weights_before_allocation(trained, tmp_path):
    ckpt = ckpt_io.load(trained / "checkpoint.pt")
    ckpt["config"]["model_kwargs"] = {"width": 200}  # ~260 G parameters if it were built
    crafted = tmp_path / "crafted.pt"
    torch.save(ckpt, crafted)
    t0 = time.perf_counter()
    with pytest.raises(ckpt_io.CheckpointError, match="does not describe the weights it holds"):
        load_checkpoint(crafted)
    assert time.perf_counter() - t0 < 5
    assert load_checkpoint(trained / "checkpoint.pt").model is not None  # an intact one still loads
