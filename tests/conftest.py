"""Shared fixtures: a small real slice of the offline CIFAR-10 JPEG copy, converted once per session."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

import pytest

# pytest-xdist runs WORKERS test processes at once: each, and every process a test starts, gets its share of
# the cores. Without this, each `fasttrain run` subprocess takes one OpenMP thread per core, the workers'
# threads spin against each other, and a 15 s end-to-end run takes two minutes. Set before torch is imported,
# so this process's own thread pools size from it too; a value the caller exported is kept.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS) if hasattr(os, "sched_getaffinity") else 1
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import torch  # noqa: E402  (after the thread settings above)

REPO = Path(__file__).resolve().parents[1]
# the shared offline copy beside the checkout, else the copy carried in the checkout's git-ignored .data/
# (how the GPU machine gets it: docs/gpu.md)
SHARED_CIFAR = next((p for p in (REPO.parent / "shared" / "data" / "cifar10-jpeg", REPO / ".data" / "cifar10-jpeg")
                     if p.is_dir()), REPO.parent / "shared" / "data" / "cifar10-jpeg")

# Subprocesses (`python -m fasttrain ...`) import this checkout's sources, not whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

TORCH_THREADS = torch.get_num_threads()  # sized from OMP_NUM_THREADS above


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that trains in-process with `threads=N` leaves torch at N threads; the next test starts at the
    worker's share again."""
    yield
    torch.set_num_threads(TORCH_THREADS)


# Files whose tests compare floating-point results with a reference, a recording or another code path:
# marked `numeric`, so CI runs them a second time with oneDNN limited to AVX2 (`make test-numeric`), which
# proves they hold on a machine of another instruction set.
NUMERIC_FILES = {"test_behaviour_fixture.py", "test_augment_reference.py", "test_fused_augment.py",
                 "test_export.py", "test_resume.py", "test_crop_resize.py", "test_stream_decode.py",
                 "test_api.py", "test_ddp.py", "test_photo_augment.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in NUMERIC_FILES:
            item.add_marker(pytest.mark.numeric)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def extract_jpeg_slice(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """Copy the first N JPEGs per class of each split of the shared copy into dest/<split>/<class>/."""
    if not SHARED_CIFAR.is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {SHARED_CIFAR}")
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        counts: dict[str, int] = {}
        with tarfile.open(SHARED_CIFAR / f"{split}.tar.gz") as tar:
            for m in tar:
                if not m.isfile() or not m.name.endswith(".jpg"):
                    continue
                cls = PurePosixPath(m.name).parts[-2]
                if counts.get(cls, 0) >= per_class:
                    continue
                counts[cls] = counts.get(cls, 0) + 1
                out = dest / split / cls / PurePosixPath(m.name).name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
                if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                    break
    return dest


@pytest.fixture(scope="session")
def cifar_jpeg_slice(tmp_path_factory) -> Path:
    """An image folder of real CIFAR-10 JPEGs: 30 train and 10 test images per class."""
    return extract_jpeg_slice(tmp_path_factory.mktemp("cifar_jpeg"), 30, 10)


@pytest.fixture(scope="session")
def cifar_tensor_slice(cifar_jpeg_slice, tmp_path_factory) -> Path:
    """The slice above converted to the tensor format (300 train / 100 test images)."""
    from fasttrain.data.convert import convert

    out = tmp_path_factory.mktemp("cifar_tensor") / "cifar10"
    return convert("cifar10", source=cifar_jpeg_slice, out=out, log=lambda s: None)


@pytest.fixture(scope="session")
def cpu_jpeg_decoder():
    """The C++ JPEG decoder of the streaming pipeline, built (or loaded from its cache) by the first test that
    asks for it: not at collection, which every pytest process does for every module."""
    from fasttrain.cuda_ext import jpeg_cpu

    if not jpeg_cpu.available():
        pytest.skip("the C++ JPEG decoder cannot be built here (no libjpeg headers or compiler)")
    return jpeg_cpu.load()
