"""Verified datasets: every kind of damage a run or eval met as a raw traceback is a DatasetError from
`check_dataset` naming the file and the fix; sha256 on demand; the identity a resume compares;
`fasttrain verify`; what a --data that is not a dataset should say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fasttrain.data.errors import DatasetError
from fasttrain.data.formats import read_labels
from fasttrain.data.tensor_format import Split, write_tensor_dataset
from fasttrain.data.verify import check_dataset, dataset_identity, is_complete


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    splits = {s: Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3)
              for s, n in (("train", 12), ("test", 6))}
    return write_tensor_dataset(tmp_path / "ds", splits, ["a", "b", "c"], name="tiny", source="test")


def _edit_meta(ds: Path, fn) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    fn(meta)
    (ds / "meta.json").write_text(json.dumps(meta))


def _truncate(ds: Path) -> None:
    path = ds / "train_images.npy"
    path.write_bytes(path.read_bytes()[:-7])


def _labels(ds: Path, arr) -> None:
    np.save(ds / "train_labels.npy", arr, allow_pickle=True)


def _smaller_images(ds: Path) -> None:  # 4x4 arrays under a meta.json that says 8x8
    np.save(ds / "train_images.npy", np.zeros((12, 4, 4, 3), dtype=np.uint8))


DAMAGE = {
    "truncated_npy": (_truncate, r"train_images.npy: \d+ bytes, but its header announces \d+ \(truncated"),
    "labels_out_of_range": (lambda ds: _labels(ds, np.full(12, 15, dtype=np.int64)), r"outside \[0, 3\)"),
    "float_labels": (lambda ds: _labels(ds, np.arange(12) * 0.5), "float labels are refused"),
    "object_labels": (lambda ds: _labels(ds, np.array([1] * 12, dtype=object)), "holds object values"),
    "object_images": (lambda ds: np.save(ds / "train_images.npy", np.array([None] * 12, dtype=object),
                                         allow_pickle=True), "holds object values"),
    "missing_test_split": (lambda ds: _edit_meta(ds, lambda m: m["splits"].pop("test")), "no 'test' split"),
    "meta_without_splits": (lambda ds: _edit_meta(ds, lambda m: m.pop("splits")), "no 'splits'"),
    "std_zero": (lambda ds: _edit_meta(ds, lambda m: m.update(std=[0.0, 0.2, 0.2])), "divide by zero"),
    "edited_num_classes": (lambda ds: _edit_meta(ds, lambda m: m.update(num_classes=5)), "does not match"),
    "one_class": (lambda ds: _edit_meta(ds, lambda m: m.update(num_classes=1, classes=["a"])),
                  "at least 2 classes"),
    "shape_differs": (_smaller_images, r"images are \[4, 4, 3\], meta.json says \[8, 8, 3\]"),
    "missing_array": (lambda ds: (ds / "test_images.npy").unlink(), "test_images.npy is missing"),
    "count_differs": (lambda ds: _edit_meta(ds, lambda m: m["splits"]["train"].update(count=11)), "11 rows"),
    "meta_not_json": (lambda ds: (ds / "meta.json").write_text("{oops"), "not valid JSON"),
    "meta_not_object": (lambda ds: (ds / "meta.json").write_text("[1, 2]"), "holds a JSON list, expected an object"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_dataset_is_named_with_the_fix(case, dataset):
    damage, message = DAMAGE[case]
    damage(dataset)
    with pytest.raises(DatasetError, match=message) as err:
        check_dataset(dataset)
    assert str(dataset) in str(err.value) and "--force" in str(err.value)
    if case != "missing_test_split":  # a train-only dataset is complete, just not trainable by `run`
        assert not is_complete(dataset)


def test_changed_bytes_fail_the_full_check_only(dataset):
    """The reproduction: 4 bytes overwritten in train_images.npy trained without complaint."""
    path = dataset / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])
    identity = dataset_identity(check_dataset(dataset, full=True))
    path.write_bytes(bytes(data))
    check_dataset(dataset)  # same size and header: the cheap check cannot see it
    with pytest.raises(DatasetError, match="train_images.npy: sha256 differs"):
        check_dataset(dataset, full=True)
    assert dataset_identity(json.loads((dataset / "meta.json").read_text())) == identity


def test_identity_tells_datasets_apart(dataset, tmp_path):
    meta = check_dataset(dataset, full=True)
    ident = dataset_identity(meta)
    assert ident["name"] == "tiny" and ident["splits"]["train"]["count"] == 12
    assert set(ident["splits"]["train"]["sha256"]) == {"train_images.npy", "train_labels.npy"}
    rng = np.random.default_rng(1)
    other = write_tensor_dataset(tmp_path / "other", {s: Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                                                               np.arange(n) % 3) for s, n in (("train", 12),
                                                                                                ("test", 6))},
                                 ["a", "b", "c"], name="tiny", source="test")
    assert dataset_identity(check_dataset(other)) != ident


def test_meta_records_identity(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    info = meta["splits"]["train"]
    assert meta["writer"] == "fasttrain" and info["label_range"] == [0, 2]
    rec = info["files"]["train_images.npy"]
    assert rec["shape"] == [12, 8, 8, 3] and rec["dtype"] == "uint8" and len(rec["sha256"]) == 64
    assert rec["bytes"] == (dataset / "train_images.npy").stat().st_size
    assert info["files"]["train_labels.npy"]["dtype"] == "int64"


def test_eval_split_that_is_not_stored_says_so(dataset):
    with pytest.raises(DatasetError, match=r"no split 'val'.*--val-split"):
        read_labels(dataset, "val")


def _jpeg_folder(root: Path) -> Path:
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "0.jpg").write_bytes(b"\xff\xd8")
    return root


@pytest.mark.parametrize("kind", ["missing", "tarball", "jpeg_folder", "per_split_tars", "empty_dir"])
def test_data_that_is_not_a_dataset_names_the_next_command(kind, tmp_path):
    path = tmp_path / "x"
    if kind == "tarball":
        path = tmp_path / "c10.tar.gz"
        with tarfile.open(path, "w:gz"):
            pass
    elif kind == "jpeg_folder":
        _jpeg_folder(path)
    elif kind == "per_split_tars":
        path.mkdir()
        (path / "train.tar.gz").write_bytes(b"")
    elif kind == "empty_dir":
        path.mkdir()
    with pytest.raises(DatasetError) as err:
        check_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and "fasttrain convert" in msg
    if kind != "missing":
        assert f"fasttrain convert cifar10 --source {path}" in msg and "imagefolder" in msg


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fasttrain", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_verify(dataset, tmp_path):
    ok = _cli("verify", dataset)
    assert ok.returncode == 0 and ok.stdout.startswith("OK ") and len(ok.stdout.strip().splitlines()) == 1
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    _truncate(bad)
    proc = _cli("verify", bad)
    assert proc.returncode == 2 and "truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_pipelines_check_the_dataset_before_reading(dataset):
    from fasttrain.pipelines import load_split_tensors, make_pipeline

    _truncate(dataset)
    with pytest.raises(DatasetError, match="train_images.npy.*truncated"):
        make_pipeline("tensor", dataset, "train", 4)
    with pytest.raises(DatasetError, match="truncated"):
        load_split_tensors("tensor", dataset, "test")


def test_cli_run_on_labels_out_of_range_is_a_message(dataset, tmp_path):
    """The reproduction: `run` on labels out of range ended in `IndexError: Target 15 is out of bounds`."""
    _labels(dataset, np.full(12, 15, dtype=np.int64))
    proc = _cli("run", "resnet9", "--data", dataset, "--epochs", 1, "--device", "cpu", "--no-compile",
                "--out", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_labels.npy" in proc.stderr and "outside [0, 3)" in proc.stderr and "--force" in proc.stderr


def test_full_check_of_a_dali_dataset_finds_a_missing_jpeg(tmp_path):
    from fasttrain.data.formats import write_dali_dataset

    rng = np.random.default_rng(0)
    splits = {s: Split(rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), np.arange(6) % 2)
              for s in ("train", "test")}
    out = write_dali_dataset(tmp_path / "dali", splits, ["a", "b"], name="t", source="test", num_workers=1)
    check_dataset(out, full=True)
    victim = sorted((out / "test").rglob("*.jpg"))[0]
    victim.unlink()
    check_dataset(out)  # the list and labels are intact: the cheap check does not stat every JPEG
    with pytest.raises(DatasetError, match=rf"{victim.name} is missing"):
        check_dataset(out, full=True)


def test_run_with_verify_checks_every_checksum_before_training(dataset, tmp_path):
    """`fasttrain run --verify` refuses the 4-byte change that the cheap load-time check cannot see."""
    path = dataset / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])
    path.write_bytes(bytes(data))
    proc = _cli("run", "resnet9", "--data", dataset, "--epochs", 1, "--device", "cpu", "--no-compile", "--verify",
                "--out", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_images.npy: sha256 differs" in proc.stderr
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder
