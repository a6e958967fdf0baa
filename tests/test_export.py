"""`fasttrain export` / fasttrain.export on a real run (resnet9 with an EMA, one tiny epoch on the CIFAR-10
slice): each format's outputs equal the checkpoint's on a batch of real test images, files are written
atomically, someone else's file is never overwritten without --force."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fasttrain
from fasttrain.checkpoint import load as load_checkpoint_file
from fasttrain.exporting import ExportError, onnx_by_torch_export, read_metadata
from fasttrain.outputs import OutputError


@pytest.fixture(scope="module")
def ema_run(cifar_tensor_slice, tmp_path_factory):
    """A run whose evaluation used EMA weights, so the export must carry those, not the raw ones."""
    out = tmp_path_factory.mktemp("export") / "run"
    fasttrain.fit("resnet9", cifar_tensor_slice, verbose=False, out=str(out), model_kwargs={"width": 0.125},
                  epochs=1, batch_size=50, train_subset=100, test_subset=50, device="cpu", amp="off",
                  compile=False, tta="none", ema=True, ema_decay=0.5)
    return out


@pytest.fixture(scope="module")
def batch(cifar_tensor_slice) -> torch.Tensor:
    return torch.from_numpy(np.load(cifar_tensor_slice / "test_images.npy")[:7])  # not the trace's batch of 2


@pytest.fixture(scope="module")
def reference(ema_run, batch) -> torch.Tensor:
    with torch.no_grad():
        return fasttrain.load(ema_run, device="cpu")(batch)


def test_onnx_matches_the_checkpoint(ema_run, batch, reference):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = fasttrain.export(ema_run, "onnx")
    assert path == ema_run / "checkpoint.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(uint8)")]
    (logits,) = session.run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(logits, reference.numpy(), rtol=1e-4, atol=1e-4)
    meta = read_metadata(path, "onnx")
    assert meta["model"] == "resnet9" and len(meta["classes"]) == 10 and meta["image_size"] == [32, 32]


@pytest.mark.slow
def test_onnx_fallback_exporter_matches_too(ema_run, batch, reference, tmp_path):
    """The torch.export-based ONNX exporter, used when tracing fails (20-30 s on 2 cores)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "dynamo.onnx"
    onnx_by_torch_export(fasttrain.load(ema_run, device="cpu"), path)
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(logits, reference.numpy(), rtol=1e-4, atol=1e-4)


def test_torchscript_matches_the_checkpoint(ema_run, batch, reference):
    path = fasttrain.export(ema_run, "torchscript")
    assert path == ema_run / "checkpoint.torchscript.pt"
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch), reference, rtol=1e-5, atol=1e-5)
    assert read_metadata(path, "torchscript")["mean"] == fasttrain.load(ema_run, device="cpu").mean


def test_safetensors_holds_the_evaluated_weights(ema_run, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path = fasttrain.export(ema_run, "safetensors", tmp_path / "weights.safetensors")
    tensors = st.load_file(str(path))
    ema_state = load_checkpoint_file(ema_run / "checkpoint.pt")["model_ema"]
    assert tensors.keys() == ema_state.keys()
    for key, value in ema_state.items():
        assert torch.equal(tensors[key], value), key
    meta = read_metadata(path, "safetensors")
    assert meta["std"] == fasttrain.load(ema_run, device="cpu").std and meta["model_kwargs"] == {"width": 0.125}


def test_export_never_overwrites_a_file_it_did_not_write(ema_run, tmp_path):
    pytest.importorskip("safetensors")
    theirs = tmp_path / "model.safetensors"
    theirs.write_text("someone's notes")
    with pytest.raises(OutputError, match="fasttrain did not write it.*force=True"):  # the API's own spelling
        fasttrain.export(ema_run, "safetensors", theirs)
    assert theirs.read_text() == "someone's notes"
    fasttrain.export(ema_run, "safetensors", theirs, force=True)
    fasttrain.export(ema_run, "safetensors", theirs)  # our own export: replaced without --force
    assert read_metadata(theirs, "safetensors")["model"] == "resnet9"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary files left
    with pytest.raises(ExportError, match="--format: must be one of onnx, torchscript, safetensors"):
        fasttrain.export(ema_run, "tflite")


def test_export_command(ema_run, tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "cli.safetensors"
    cmd = [sys.executable, "-m", "fasttrain", "export", str(ema_run), "--format", "safetensors", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert json.loads(json.dumps(read_metadata(out, "safetensors")))["classes"][0] == "airplane"
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"not onnx")
    proc = subprocess.run(cmd[:5] + ["--out", str(foreign)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert foreign.read_bytes() == b"not onnx"


def test_safetensors_metadata_says_what_its_weights_take_and_how_to_rebuild_them(ema_run, batch, reference, tmp_path):
    """The metadata states one input, the bare network's (normalised float NCHW: the file holds weights
    only), and its `rebuild` code, run as written, builds a network that gives the checkpoint's logits on
    images normalised as `input` says."""
    pytest.importorskip("safetensors")
    path = fasttrain.export(ema_run, "safetensors", tmp_path / "weights.safetensors")
    meta = read_metadata(path, "safetensors")
    assert meta["input"].startswith("float32 (N, 3, 32, 32) RGB = (pixels / 255 - mean) / std")
    assert "uint8" not in json.dumps(meta) and "folded" not in json.dumps(meta)
    scope = {"path": str(path)}
    exec(meta["rebuild"], scope)  # noqa: S102 - the instructions a user would follow, run as written
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        torch.testing.assert_close(scope["net"](x), reference, rtol=1e-4, atol=1e-4)
    # the formats holding the whole Classifier say they take raw pixels, and nothing about rebuilding
    onnx_meta = fasttrain.exporting.metadata(fasttrain.load(ema_run, device="cpu"), "torchscript")
    assert onnx_meta["input"].startswith("uint8 (N, 32, 32, 3) RGB") and "rebuild" not in onnx_meta
    # a run of an nn.Module given to fit: only its author can build the module; the code says so
    assert fasttrain.exporting.rebuild_code("module/MyNet", 10, {}).startswith("# net = MyNet(...)")
