"""Every pipeline against one contract, on real CIFAR-10 JPEGs converted to every format; the writers'
timeout and atomicity; the CLI's --format and --pipeline.

The tensor dataset is the reference: each yielded image is matched to its source image by nearest
neighbour (exact for raw formats, within JPEG re-encoding error for dali), which checks coverage (every
sample exactly once per epoch), that labels travel with their images, and the pixels themselves.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fasttrain.pipelines import load_split_tensors, make_pipeline

from fasttrain.data.convert import convert as convert_dataset
from fasttrain.data.formats import (
    MissingBackend,
    WriterTimeout,
    _write_atomically,
    read_file_list,
    read_labels,
)
from fasttrain.data.tensor_format import DatasetError, load_split, read_meta
from fasttrain.data.verify import is_complete

# (pipeline, dataset format, max mean |pixel difference| against the source image)
CASES = [("tensor", "tensor", 0.0), ("ffcv", "ffcv", 0.0), ("dali", "dali", 4.0),
         ("torchvision", "dali", 4.0), ("torchvision", "tensor", 0.0)]
IDS = [f"{p}-{f}" for p, f, _ in CASES]
BATCH = 64


# the optional package each pipeline / dataset format needs; a case whose package is missing skips
BACKEND_MODULES = {"ffcv": "ffcv", "dali": "nvidia.dali"}


def has(name: str) -> bool:
    try:
        importlib.import_module(BACKEND_MODULES.get(name, name))
        return True
    except ImportError:
        return False


def need(name: str) -> None:
    """Skip the calling test when pipeline or format `name` needs a package that is not installed."""
    if name in BACKEND_MODULES:
        pytest.importorskip(BACKEND_MODULES[name])


class Datasets:
    """The session's slice in every format, each converted on first use (FFCV only where ffcv imports),
    so a machine without an optional backend skips the cases that need it and runs all the others."""

    def __init__(self, jpeg_dir, tensor_dir, root):
        self.jpeg_dir, self.root = jpeg_dir, root
        self.paths = {"tensor": str(tensor_dir)}

    def __getitem__(self, fmt: str) -> str:
        if fmt not in self.paths:
            if fmt == "ffcv":  # only writing .beton files needs the package; DALI's format is JPEG files
                need("ffcv")
            self.paths[fmt] = str(convert_dataset("cifar10", fmt=fmt, source=self.jpeg_dir, out=self.root / fmt,
                                                  log=lambda s: None))
        return self.paths[fmt]


@pytest.fixture(scope="session")
def datasets(cifar_jpeg_slice, cifar_tensor_slice, tmp_path_factory) -> Datasets:
    return Datasets(cifar_jpeg_slice, cifar_tensor_slice, tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="session")
def reference(cifar_tensor_slice):
    split = load_split(cifar_tensor_slice, "train")
    return torch.from_numpy(np.array(split.images)).reshape(len(split.labels), -1).float(), np.array(split.labels)


def match(ref: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest reference image, mean |difference| to it) for each image of a batch."""
    d = torch.cdist(x.reshape(len(x), -1).float().cpu(), ref, p=1) / ref.shape[1]
    dist, idx = d.min(1)
    return idx, dist


def epoch_indices(pipe, ref, labels, tol) -> list[int]:
    order = []
    for x, y in pipe:
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1:] == (32, 32, 3), (x.dtype, x.shape)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert x.device.type == "cpu" and y.device.type == "cpu"
        idx, dist = match(ref, x)
        assert float(dist.max()) <= tol, f"pixels differ from the source by {float(dist.max()):.2f} > {tol}"
        assert np.array_equal(labels[idx.numpy()], y.numpy()), "labels do not travel with their images"
        order += idx.tolist()
    return order


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name,fmt,tol", CASES, ids=IDS)
def test_contract_two_epochs(name, fmt, tol, datasets, reference):
    need(name)
    ref, labels = reference
    n = len(labels)
    pipe = make_pipeline(name, datasets[fmt], "train", BATCH, seed=3)
    assert len(pipe) == math.ceil(n / BATCH)
    orders = []
    for epoch in range(2):
        pipe.set_epoch(epoch)
        order = epoch_indices(pipe, ref, labels, tol)
        assert sorted(order) == list(range(n)), "every sample exactly once per epoch"
        orders.append(order)
    assert orders[0] != orders[1], "each epoch has its own order"
    assert orders[0] != sorted(orders[0]), "the order is shuffled"

    # determinism: the same seed gives the same batches, also when a fresh pipeline jumps straight to
    # epoch 1 (a resumed run); another seed gives another order
    again = make_pipeline(name, datasets[fmt], "train", BATCH, seed=3)
    for epoch in (1, 0):
        again.set_epoch(epoch)
        assert epoch_indices(again, ref, labels, tol) == orders[epoch]
    other = make_pipeline(name, datasets[fmt], "train", BATCH, seed=4)
    assert torch.cat([y for _, y in other]).tolist() != labels[orders[0]].tolist()


@pytest.mark.parametrize("name,fmt,tol", CASES, ids=IDS)
def test_drop_last_subset_and_eval_split(name, fmt, tol, datasets, reference, cifar_tensor_slice):
    need(name)
    ref, labels = reference
    subset = np.arange(5, 300, 3)  # 99 samples
    pipe = make_pipeline(name, datasets[fmt], "train", 16, seed=0, indices=subset, drop_last=True)
    assert len(pipe) == 99 // 16
    order = epoch_indices(pipe, ref, labels, tol)
    assert len(order) == 96 and len(set(order)) == 96 and set(order) <= set(subset.tolist())

    # evaluation tensors: whole split, dataset order, decoded by the same backend
    x, y = load_split_tensors(name, datasets[fmt], "test")
    test = load_split(cifar_tensor_slice, "test")
    assert x.dtype == torch.uint8 and x.shape == (100, 32, 32, 3) and y.dtype == torch.int64
    assert np.array_equal(y.numpy(), np.asarray(test.labels))
    diff = (x.float() - torch.from_numpy(np.array(test.images)).float()).abs().mean(dim=(1, 2, 3))
    assert float(diff.max()) <= tol


def test_torchvision_matches_tensor_pipeline_batch_for_batch(datasets):
    """Same order formula: on the CPU the baseline and the tensor pipeline yield identical batches."""
    a = make_pipeline("tensor", datasets["tensor"], "train", 50, seed=7)
    b = make_pipeline("torchvision", datasets["tensor"], "train", 50, seed=7, num_workers=0)
    for epoch in range(2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("name,fmt,tol", [("dali", "dali", 4.0), ("torchvision", "dali", 4.0)])
def test_sharding_splits_the_epoch(name, fmt, tol, datasets, reference):
    """DDP: ranks with the same seed see disjoint, equal shares that together cover the epoch (and the
    odd sample out is dropped when the count does not divide)."""
    need(name)
    ref, labels = reference
    for world, per_rank in ((2, 150), (7, 42)):
        shards = []
        for rank in range(world):
            pipe = make_pipeline(name, datasets[fmt], "train", 32, seed=1, rank=rank, world_size=world,
                                 num_workers=0 if name == "torchvision" else None)
            pipe.set_epoch(1)
            assert len(pipe) == math.ceil(per_rank / 32)
            shards.append(epoch_indices(pipe, ref, labels, tol))
        assert all(len(s) == per_rank for s in shards)
        union = [i for s in shards for i in s]
        assert len(set(union)) == len(union) == world * per_rank


def test_dali_pipeline_is_built_once_per_run(datasets, reference):
    """Decoder set-up happens once, not in every (timed) epoch; a jump out of sequence or an epoch left
    unfinished rebuilds it, and the order is still the seeded one."""
    need("dali")
    ref, labels = reference
    pipe = make_pipeline("dali", datasets["dali"], "train", BATCH, seed=3)
    orders = []
    for epoch in range(3):
        pipe.set_epoch(epoch)
        orders.append(epoch_indices(pipe, ref, labels, 4.0))
    assert pipe.builds == 1
    assert [sorted(o) for o in orders] == [list(range(len(labels)))] * 3 and orders[0] != orders[1]
    pipe.set_epoch(1)  # out of sequence (a test, or a resumed run)
    assert epoch_indices(pipe, ref, labels, 4.0) == orders[1] and pipe.builds == 2
    pipe.set_epoch(2)
    next(iter(pipe))  # abandoned after one batch
    assert epoch_indices(pipe, ref, labels, 4.0) == orders[2] and pipe.builds == 3


# ----------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["ffcv", "dali"])
def test_format_metadata_and_labels(fmt, datasets, cifar_tensor_slice):
    tensor_meta = read_meta(cifar_tensor_slice)
    meta = read_meta(datasets[fmt])
    assert meta["format"] == fmt and meta["classes"] == tensor_meta["classes"]
    assert meta["mean"] == tensor_meta["mean"] and meta["std"] == tensor_meta["std"]
    assert meta["shape"] == [32, 32, 3]
    for split in ("train", "test"):
        info = meta["splits"][split]
        assert info["class_counts"] == tensor_meta["splits"][split]["class_counts"]
        assert np.array_equal(read_labels(datasets[fmt], split), load_split(cifar_tensor_slice, split).labels)
    assert is_complete(datasets[fmt], fmt) and not is_complete(datasets[fmt], "tensor")
    if fmt == "ffcv":
        assert meta["ffcv"]["write_mode"] == "raw"
    else:
        files, labels = read_file_list(datasets["dali"], "test")
        assert len(files) == 100 and all(os.path.isfile(f) and f.endswith(".jpg") for f in files)
        assert np.array_equal(labels, read_labels(datasets["dali"], "test"))


@pytest.mark.parametrize("fmt", ["ffcv", "dali"])
def test_jpeg_quality_and_max_resolution(fmt, cifar_jpeg_slice, tmp_path):
    need(fmt)  # reading back uses the format's own pipeline
    out = convert_dataset("cifar10", fmt=fmt, source=cifar_jpeg_slice, out=tmp_path / fmt, jpeg_quality=80,
                          max_resolution=16, log=lambda s: None)
    meta = read_meta(out)
    assert meta["shape"] == [16, 16, 3] and meta[fmt]["jpeg_quality"] == 80 and meta[fmt]["max_resolution"] == 16
    if fmt == "ffcv":
        assert meta["ffcv"]["write_mode"] == "jpg"
    x, y = load_split_tensors(fmt, out, "test")
    assert x.shape == (100, 16, 16, 3) and x.dtype == torch.uint8 and len(y) == 100
    logs = []
    convert_dataset("cifar10", fmt=fmt, source=cifar_jpeg_slice, out=out, log=logs.append)
    assert "reusing" in logs[0]


def test_writer_timeout_kills_the_writer_and_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    out = tmp_path / "ds"

    def hang(tmp):
        (tmp / "train.beton").write_bytes(b"partial")
        child = subprocess.Popen(["sleep", "60"])  # stands in for FFCV's writer workers
        pid_file.write_text(str(child.pid))
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(WriterTimeout, match="did not finish within 1 s"):
        _write_atomically(out, "ffcv", hang, {}, timeout_s=1.0)
    assert time.monotonic() - t0 < 15
    assert not out.exists() and list(tmp_path.iterdir()) == [pid_file], "no partial output left behind"
    time.sleep(0.2)
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:  # a zombie (reaped later by init) is dead too
            assert f.read().split()[2] == "Z", "the writer's child process survived the timeout"
    except (ProcessLookupError, FileNotFoundError):
        pass


def test_failed_rewrite_keeps_the_old_dataset(datasets, tmp_path):
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(datasets["dali"], out)
    before = (out / "meta.json").read_text()

    def fail(tmp):
        (tmp / "train_list.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(DatasetError, match="disk full"):
        _write_atomically(out, "dali", fail, {}, timeout_s=30)
    assert (out / "meta.json").read_text() == before and is_complete(out, "dali")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def ffcv_shaped_dataset(datasets, tmp_path) -> str:
    """A directory whose meta.json says 'ffcv' (the DALI copy relabelled): the format checks and the
    missing-package error come before any .beton is read, so this needs no ffcv to build."""
    import shutil

    out = tmp_path / "ffcv-meta"
    if not out.exists():
        shutil.copytree(datasets["dali"], out)
        meta = json.loads((out / "meta.json").read_text())
        meta["format"] = "ffcv"
        (out / "meta.json").write_text(json.dumps(meta))
    return str(out)


def test_format_mismatch_and_missing_package_errors(datasets, monkeypatch, tmp_path):
    # without ffcv installed, the missing package is reported first (either way: a clear DatasetError)
    with pytest.raises(DatasetError, match="--format ffcv" if has("ffcv") else r"fasttrain\[ffcv\]"):
        make_pipeline("ffcv", datasets["tensor"], "train", 8)
    with pytest.raises(DatasetError, match="'dali' or 'tensor'"):
        make_pipeline("torchvision", ffcv_shaped_dataset(datasets, tmp_path), "train", 8)
    with pytest.raises(ValueError, match="unknown pipeline 'nope'"):
        make_pipeline("nope", datasets["tensor"], "train", 8)
    monkeypatch.setitem(sys.modules, "ffcv", None)  # import ffcv now raises ImportError
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(MissingBackend, match=r"pip install 'fasttrain\[ffcv\]'"):
        make_pipeline("ffcv", ffcv_shaped_dataset(datasets, tmp_path), "train", 8)
    with pytest.raises(MissingBackend, match=r"pip install 'fasttrain\[dali\]'"):
        make_pipeline("dali", datasets["dali"], "train", 8)
    with pytest.raises(MissingBackend, match=r"fasttrain\[ffcv\]"):
        convert_dataset("cifar10", fmt="ffcv", source="/nonexistent", out=tmp_path / "ffcv-x")


# ----------------------------------------------------------------------------- CLI, one epoch per pipeline
def fasttrain(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "fasttrain", *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"fasttrain {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name,fmt", [("tensor", "tensor"), ("ffcv", "ffcv"), ("dali", "dali"),
                                      ("torchvision", "dali")])
def test_cli_convert_and_run_one_epoch(name, fmt, cifar_jpeg_slice, tmp_path):
    need(name)
    need(fmt)
    data = tmp_path / f"cifar10-{fmt}"
    out = fasttrain("convert", "cifar10", "--source", cifar_jpeg_slice, "--out", data, "--format", fmt).stdout
    assert "wrote" in out and read_meta(data)["format"] == fmt
    run_dir = tmp_path / "run"
    fasttrain("run", "resnet9", "--data", data, "--pipeline", name, "--epochs", 1, "--batch-size", 64,
              "--width", 0.25, "--device", "cpu", "--no-compile", "--amp", "off", "--out", run_dir, "--seed", 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_samples"] == 100 and summary["train_samples"] == 300 and summary["steps"] == 5
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["train_imgs_per_s"] > 0
    assert json.loads((run_dir / "config.json").read_text())["pipeline"] == name


@pytest.mark.slow
def test_cli_rejects_bad_format_and_pipeline(datasets, tmp_path):
    proc = fasttrain("convert", "cifar10", "--format", "hdf5", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "--format" in proc.stderr and "ffcv" in proc.stderr
    proc = fasttrain("run", "resnet9", "--data", datasets["tensor"], "--pipeline", "ffcv", "--out", tmp_path / "r",
                     check=False)
    assert proc.returncode == 2 and ("--format ffcv" if has("ffcv") else "fasttrain[ffcv]") in proc.stderr


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name,fmt,tol", CASES, ids=IDS)
def test_contract_on_gpu(name, fmt, tol, datasets, reference):
    """On a GPU batches arrive on the device (DALI decodes with nvJPEG, FFCV uses ToDevice)."""
    need(name)
    ref, labels = reference
    pipe = make_pipeline(name, datasets[fmt], "train", BATCH, seed=3, device="cuda")
    order = []
    for x, y in pipe:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8 and y.dtype == torch.int64
        idx, dist = match(ref, x)
        assert float(dist.max()) <= tol + 2.0  # nvJPEG may round differently from libjpeg
        assert np.array_equal(labels[idx.numpy()], y.cpu().numpy())
        order += idx.tolist()
    assert sorted(order) == list(range(len(labels)))
