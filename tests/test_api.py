"""The Python API on the real CIFAR-10 slice: fit (zoo name on in-memory arrays, an nn.Module on a dataset
path), load, predict (arrays and image files), the input checks, and the notebook example of
docs/python_api.md run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import fasttrain
from fasttrain.api import Classifier, FitResult, _in_memory_splits
from fasttrain.config import ConfigError
from fasttrain.models.registry import MODELS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"
TINY_RUN = dict(epochs=1, batch_size=50, device="cpu", amp="off", compile=False, tta="none")


def split_arrays(data_dir: Path) -> dict:
    meta = json.loads((data_dir / "meta.json").read_text())
    arrays = {f"{s}_{k}": torch.from_numpy(np.load(data_dir / f"{s}_{k}.npy"))
              for s in ("train", "test") for k in ("images", "labels")}
    return {**arrays, "classes": meta["classes"]}


class TinyNet(nn.Module):
    """A user's own module: conv, BN, global pool, linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def memory_fit(cifar_tensor_slice, tmp_path_factory) -> FitResult:
    """resnet9 (width 1/8) for one epoch on the slice given as in-memory torch tensors."""
    out = tmp_path_factory.mktemp("api") / "run"
    return fasttrain.fit("resnet9", split_arrays(cifar_tensor_slice), verbose=False, out=str(out),
                         model_kwargs={"width": 0.125}, **TINY_RUN)


def test_import_fasttrain_is_cheap_and_the_api_loads_on_use():
    code = ("import sys, fasttrain; assert 'torch' not in sys.modules, 'import fasttrain imported torch'; "
            "assert {'fit', 'load', 'predict', 'export'} <= set(dir(fasttrain)); "
            "from fasttrain import fit, FitResult; assert callable(fit) and 'torch' in sys.modules; "
            "print(fasttrain.predict.__module__, fasttrain.export.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fasttrain.api", "fasttrain.exporting"]


def test_api_names_stay_functions_after_every_submodule_is_imported():
    """Importing a submodule sets it as an attribute of the package: no submodule may share a name with the
    API's functions (a fasttrain/predict.py would turn fasttrain.predict into a module on first import)."""
    import importlib

    for path in sorted(Path(fasttrain.__file__).parent.glob("*.py")):
        if path.stem not in ("__init__", "__main__"):
            importlib.import_module(f"fasttrain.{path.stem}")
    for name in ("fit", "load", "predict", "export"):
        assert callable(getattr(fasttrain, name)), f"fasttrain.{name} is {getattr(fasttrain, name)!r}"


def test_fit_on_in_memory_arrays(memory_fit, cifar_tensor_slice):
    result = memory_fit
    assert isinstance(result, FitResult) and isinstance(result.model, Classifier)
    assert not result.model.training
    assert result.summary["model"] == "resnet9" and 0.0 <= result.summary["test_acc"] <= 1.0
    assert result.summary["train_samples"] == 300 and result.summary["test_samples"] == 100
    for name in ("checkpoint.pt", "summary.json", "config.json"):
        assert (result.run_dir / name).is_file(), name
    meta = json.loads((cifar_tensor_slice / "meta.json").read_text())
    assert result.model.classes == meta["classes"]
    assert result.model.mean == pytest.approx(meta["mean"], abs=1e-6)  # train statistics of the arrays
    # the temporary dataset the arrays were written to is gone; the run still loads (image size recorded)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert "fasttrain-data-" in config["data"] and not Path(config["data"]).exists()


def test_predict_agrees_with_the_runs_evaluation(memory_fit, cifar_tensor_slice):
    images = np.load(cifar_tensor_slice / "test_images.npy")
    labels = np.load(cifar_tensor_slice / "test_labels.npy")
    preds = fasttrain.predict(memory_fit, images)
    assert preds.probs.shape == (100, 10) and preds.labels.shape == (100,)
    assert torch.allclose(preds.probs.sum(1), torch.ones(100), atol=1e-5)
    # same weights, same normalisation as the run's final (tta none) evaluation: same accuracy
    acc = float((preds.labels.numpy() == labels).mean())
    assert acc == pytest.approx(memory_fit.summary["test_acc"], abs=0.011)
    assert preds.names[:3] == [memory_fit.model.classes[i] for i in preds.labels[:3]]
    # a run directory, a torch tensor, one (H, W, C) image: the same answer
    again = fasttrain.predict(memory_fit.run_dir, torch.from_numpy(images[:5]))
    assert torch.allclose(again.probs, preds.probs[:5], atol=1e-5)
    one = fasttrain.predict(memory_fit.model, images[0])
    assert torch.allclose(one.probs, preds.probs[:1], atol=1e-5)
    flipped = fasttrain.predict(memory_fit, images[:5], tta="flip")
    assert flipped.probs.shape == (5, 10) and not torch.allclose(flipped.probs, preds.probs[:5])


def test_load_gives_the_same_model_from_a_run_or_a_checkpoint(memory_fit, cifar_tensor_slice):
    x = torch.from_numpy(np.load(cifar_tensor_slice / "test_images.npy")[:6])
    with torch.no_grad():
        reference = memory_fit.model(x)
        for source, which in ((memory_fit.run_dir, None), (memory_fit.run_dir / "checkpoint.pt", None),
                              (memory_fit.run_dir, "last")):
            loaded = fasttrain.load(source, checkpoint=which, device="cpu")
            assert not loaded.training and loaded.image_size == (32, 32)
            assert torch.equal(loaded(x), reference)
    with pytest.raises(ValueError, match=r"expected uint8 \(N, H, W, 3\)"):
        loaded(x.permute(0, 3, 1, 2).float())
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        fasttrain.load(memory_fit.run_dir / "missing")
    with pytest.raises(FileNotFoundError, match=r"best.pt only when it trains with a validation split"):
        fasttrain.load(memory_fit.run_dir, checkpoint="best")  # this run had no val split


def test_predict_reads_image_files(memory_fit, cifar_jpeg_slice):
    from PIL import Image

    files = sorted((cifar_jpeg_slice / "test").glob("*/*.jpg"))[:4]
    preds = fasttrain.predict(memory_fit, files)
    decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # already 32x32
    assert torch.allclose(preds.probs, fasttrain.predict(memory_fit, decoded).probs, atol=1e-6)


def test_fit_an_nn_module(cifar_tensor_slice, tmp_path):
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = fasttrain.fit(net, cifar_tensor_slice, verbose=False, out=str(tmp_path / "run"), lr=0.05,
                           train_subset=100, **TINY_RUN)
    assert result.model.net is net  # trained in place
    assert not torch.equal(net.conv.weight, before["conv.weight"].to(net.conv.weight.device))
    assert not any(name.startswith("module/") for name in MODELS)  # registered for the run only
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "module/TinyNet"
    # the run cannot be rebuilt by name; a fresh instance of the module loads it
    with pytest.raises(ValueError, match="cannot be rebuilt by name"):
        fasttrain.load(result.run_dir)
    again = fasttrain.load(result.run_dir, model=TinyNet(), device="cpu")
    x = torch.from_numpy(np.load(cifar_tensor_slice / "test_images.npy")[:4])
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))


def test_fit_explains_bad_input(cifar_tensor_slice):
    with pytest.raises(ConfigError, match="unknown option 'epoch'; did you mean epochs"):
        fasttrain.fit("resnet9", cifar_tensor_slice, epoch=1)
    with pytest.raises(ConfigError, match="unknown model 'resnet_9'"):
        fasttrain.fit("resnet_9", cifar_tensor_slice, **TINY_RUN)
    with pytest.raises(ConfigError, match="expected a model name or an nn.Module"):
        fasttrain.fit(42, cifar_tensor_slice)
    with pytest.raises(ConfigError, match=r"TinyNet returns \(2, 5\).*10 classes"):
        fasttrain.fit(TinyNet(num_classes=5), cifar_tensor_slice, **TINY_RUN)
    arrays = split_arrays(cifar_tensor_slice)
    nchw = dict(arrays, train_images=arrays["train_images"].permute(0, 3, 1, 2).float() / 255)
    with pytest.raises(ConfigError, match=r"train_images must be .*float32.*permute\(0, 2, 3, 1\)"):
        fasttrain.fit("resnet9", nchw, **TINY_RUN)
    with pytest.raises(ConfigError, match=r"missing \['test_labels'\]"):
        fasttrain.fit("resnet9", {k: v for k, v in arrays.items() if k != "test_labels"}, **TINY_RUN)
    assert not any(name.startswith("module/") for name in MODELS)


def test_in_memory_tuple_form_and_default_class_names(cifar_tensor_slice):
    arrays = split_arrays(cifar_tensor_slice)
    splits, classes = _in_memory_splits(tuple(arrays[k].numpy() for k in
                                              ("train_images", "train_labels", "test_images", "test_labels")))
    assert classes == [str(i) for i in range(10)]
    assert splits["train"].images.shape == (300, 32, 32, 3) and splits["test"].labels.dtype == np.int64


def test_the_documented_notebook_example_runs(cifar_tensor_slice, tmp_path, monkeypatch):
    """The first python block of docs/python_api.md, run as written with the slice as data/cifar10."""
    pytest.importorskip("onnx")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    code = blocks[0]
    assert "fasttrain.fit(" in code and "fasttrain.predict(" in code and "fasttrain.export(" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("data/cifar10", str(cifar_tensor_slice)), str(DOCS), "exec"), {})
    assert (tmp_path / "runs" / "notebook" / "summary.json").is_file()
    assert (tmp_path / "runs" / "notebook" / "model.onnx").is_file()
