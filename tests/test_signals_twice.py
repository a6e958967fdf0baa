"""Ctrl-C pressed twice: a run still exits 130 with a whole checkpoint (the new one or the previous one),
never killed by the signal on its way out; a convert interrupted while writing leaves no temporary folder."""

from __future__ import annotations

import io
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as photos

from fasttrain.data.tensor_format import Split, write_tensor_dataset
from fasttrain.data.verify import check_dataset


def _cifar_tar(path: Path, per_batch: int) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, per_batch).tolist()}
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        data = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def cifar_source(tmp_path_factory) -> Path:
    return _cifar_tar(tmp_path_factory.mktemp("cifar") / "cifar.tar", 2000)


# (presses, seconds between them, tries): 0 ms apart and a burst hit the instant the first KeyboardInterrupt is
# being raised and handled (before the fix: exit -2 and the temp folder left, every try of the burst)
PRESSES = {"0 ms apart": (2, 0.0, 3), "a burst 0.2 ms apart": (200, 0.0002, 2), "50 ms apart": (2, 0.05, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PRESSES))
def test_ctrl_c_twice_in_convert_leaves_no_temp_folder(case, cifar_source, tmp_path):
    presses, gap_s, tries = PRESSES[case]
    for _ in range(tries):
        out = tmp_path / "ds"
        proc = subprocess.Popen([sys.executable, "-m", "fasttrain", "convert", "cifar10", "--source",
                                 str(cifar_source), "--out", str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".ds.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, proc.communicate()[1]  # caught while writing the arrays
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)  # the process ignores further ones, it does not end by them
            start = time.perf_counter()
            while time.perf_counter() - start < gap_s:  # a busy wait: sleep() would round 0.2 ms up
                pass
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert not list(tmp_path.glob(".ds.*"))  # no temporary (or swapped-out) folder left
        if out.exists():  # the signal came after the rename: then the dataset is whole
            check_dataset(out, full=True)
            shutil.rmtree(out)


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory) -> Path:
    crops = [p[y:y + 32, x:x + 32] for p in (photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket())
             for y in range(0, 288, 32) for x in range(0, 320, 32)]
    images = np.stack(crops).astype(np.uint8)
    labels = np.arange(len(images)) % 4
    splits = {"train": Split(images[:300], labels[:300]), "test": Split(images[300:], labels[300:])}
    return write_tensor_dataset(tmp_path_factory.mktemp("photos") / "data", splits, ["a", "b", "c", "d"],
                                name="photos", source="skimage.data")


@pytest.mark.slow
@pytest.mark.parametrize("gap_s", [0.01, 0.5])  # during the stop (saving), and while the process exits
def test_ctrl_c_twice_in_a_run_exits_130_with_a_whole_checkpoint(gap_s, photo_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["run", "resnet9", "--data", photo_dataset, "--out", out, "--epochs", 40, "--batch-size", 50,
            "--width", 0.25, "--device", "cpu", "--amp", "off", "--no-compile", "--threads", 1, "--tta", "none",
            "--no-tensorboard"]
    proc = subprocess.Popen([sys.executable, "-m", "fasttrain", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]  # not -2 (killed by the signal)
    assert "Traceback" not in stderr
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["position"]["step"] >= 6  # a whole checkpoint: at least the first epoch's
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint beside it
