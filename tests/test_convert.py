"""Converters: tiny archives in each official format, built here, checked pixel for pixel."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrain.data.convert import convert
from fasttrain.data.sources import SourceError
from fasttrain.data.tensor_format import load_split, read_meta
from fasttrain.data.verify import check_dataset, is_complete

CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _random_split(rng, n, num_classes=10):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.int64)
    return images, labels


def _to_rows(images):  # NHWC -> official CHW rows
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def make_python_tarball(path: Path, rng, per_batch=4, dataset="cifar10"):
    """Official python-version layout, pickled like the Python 2 originals (bytes keys)."""
    splits = {}
    with tarfile.open(path, "w:gz") as tar:
        if dataset == "cifar10":
            parts = []
            for i in range(1, 6):
                im, lb = _random_split(rng, per_batch)
                parts.append((im, lb))
                batch = {b"data": _to_rows(im), b"labels": lb.tolist(), b"batch_label": b"x"}
                _add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(batch, protocol=2))
            im, lb = _random_split(rng, per_batch)
            _add_bytes(tar, "cifar-10-batches-py/test_batch",
                       pickle.dumps({b"data": _to_rows(im), b"labels": lb.tolist()}, protocol=2))
            _add_bytes(tar, "cifar-10-batches-py/batches.meta",
                       pickle.dumps({b"label_names": [c.encode() for c in CLASSES10]}, protocol=2))
            splits["train"] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            splits["test"] = (im, lb)
        else:
            names = [f"class{i:02d}" for i in range(100)]
            for split in ("train", "test"):
                im, lb = _random_split(rng, per_batch * 2, 100)
                _add_bytes(tar, f"cifar-100-python/{split}", pickle.dumps(
                    {b"data": _to_rows(im), b"fine_labels": lb.tolist(), b"coarse_labels": (lb // 5).tolist()},
                    protocol=2))
                splits[split] = (im, lb)
            _add_bytes(tar, "cifar-100-python/meta",
                       pickle.dumps({b"fine_label_names": [n.encode() for n in names]}, protocol=2))
    return splits


def make_binary_tarball(path: Path, rng, per_batch=3, dataset="cifar10"):
    splits = {}
    with tarfile.open(path, "w:gz") as tar:
        if dataset == "cifar10":
            train = []
            for i in range(1, 6):
                im, lb = _random_split(rng, per_batch)
                train.append((im, lb))
                rec = np.concatenate([lb[:, None].astype(np.uint8), _to_rows(im)], 1)
                _add_bytes(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", rec.tobytes())
            im, lb = _random_split(rng, per_batch)
            rec = np.concatenate([lb[:, None].astype(np.uint8), _to_rows(im)], 1)
            _add_bytes(tar, "cifar-10-batches-bin/test_batch.bin", rec.tobytes())
            _add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CLASSES10) + "\n\n").encode())
            splits["train"] = (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]))
            splits["test"] = (im, lb)
        else:
            for split in ("train", "test"):
                im, lb = _random_split(rng, per_batch * 2, 100)
                rec = np.concatenate([(lb // 5)[:, None].astype(np.uint8), lb[:, None].astype(np.uint8),
                                      _to_rows(im)], 1)
                _add_bytes(tar, f"cifar-100-binary/{split}.bin", rec.tobytes())
                splits[split] = (im, lb)
            _add_bytes(tar, "cifar-100-binary/fine_label_names.txt",
                       "\n".join(f"class{i:02d}" for i in range(100)).encode())
    return splits


def assert_converted_equals(out: Path, expected: dict, classes=None):
    assert is_complete(out)
    meta = check_dataset(out, full=True)
    if classes is not None:
        assert meta["classes"] == classes
    for split, (images, labels) in expected.items():
        got = load_split(out, split)
        np.testing.assert_array_equal(np.asarray(got.images), images)
        np.testing.assert_array_equal(np.asarray(got.labels), labels)
        assert got.labels.dtype == np.int64 and got.images.dtype == np.uint8
        assert meta["splits"][split]["count"] == len(labels)
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
    train = expected["train"][0].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(meta["mean"], train.mean(0), atol=1e-5)
    np.testing.assert_allclose(meta["std"], train.std(0), atol=1e-5)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_python_tarball(tmp_path, dataset):
    src = tmp_path / f"{dataset}-python.tar.gz"
    expected = make_python_tarball(src, np.random.default_rng(0), dataset=dataset)
    out = convert(dataset, source=src, out=tmp_path / "out", log=lambda s: None)
    assert_converted_equals(out, expected, CLASSES10 if dataset == "cifar10" else None)
    assert read_meta(out)["source"].startswith("python:")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_binary_tarball(tmp_path, dataset):
    src = tmp_path / f"{dataset}-binary.tar.gz"
    expected = make_binary_tarball(src, np.random.default_rng(1), dataset=dataset)
    out = convert(dataset, source=src, out=tmp_path / "out", log=lambda s: None)
    assert_converted_equals(out, expected, CLASSES10 if dataset == "cifar10" else None)


def _write_image_folder(root: Path, rng, per_class=2):
    """PNG (lossless) so decoded pixels must match exactly."""
    expected = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(CLASSES10):
            for k in range(per_class):
                im = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = root / split / cls / f"{k:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(path)
                images.append(im)
                labels.append(label)
        expected[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return expected


def test_image_folder_and_tars(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "folder"
    expected = _write_image_folder(folder, rng)
    out = convert("cifar10", source=folder, out=tmp_path / "a", log=lambda s: None)
    assert_converted_equals(out, expected, CLASSES10)

    # one tar.gz of the whole folder, with a top-level directory inside
    single = tmp_path / "all.tar.gz"
    with tarfile.open(single, "w:gz") as tar:
        tar.add(folder, arcname="cifar10-images")
    assert_converted_equals(convert("cifar10", source=single, out=tmp_path / "b", log=lambda s: None), expected)

    # a directory of per-split tarballs, like ../shared/data/cifar10-jpeg
    per_split = tmp_path / "per_split"
    per_split.mkdir()
    for split in ("train", "test"):
        with tarfile.open(per_split / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(folder / split, arcname=split)
    assert_converted_equals(convert("cifar10", source=per_split, out=tmp_path / "c", log=lambda s: None), expected)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    src = tmp_path / "evil.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        payload = pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2)
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", payload)
        for i in range(1, 6):
            _add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", payload)
        _add_bytes(tar, "cifar-10-batches-py/test_batch", payload)
    with pytest.raises(SourceError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        convert("cifar10", source=src, out=tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


def test_reuse_and_force(tmp_path):
    src = tmp_path / "c10.tar.gz"
    make_python_tarball(src, np.random.default_rng(3))
    out = convert("cifar10", source=src, out=tmp_path / "out", log=lambda s: None)
    stamp = json.loads((out / "meta.json").read_text())["created"]
    messages = []
    convert("cifar10", source=src, out=out, log=messages.append)
    assert "reusing" in messages[0]
    make_python_tarball(src, np.random.default_rng(4))  # new content: --force must pick it up
    convert("cifar10", source=src, out=out, force=True, log=lambda s: None)
    assert is_complete(out)
    assert json.loads((out / "meta.json").read_text())["created"] >= stamp


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        convert("cifar10", source=tmp_path / "missing", out=tmp_path / "o", log=lambda s: None)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(SourceError, match="junk.tar.gz"):
        convert("cifar10", source=junk, out=tmp_path / "o", log=lambda s: None)
    folder = tmp_path / "broken"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train" / "cat" / "0.jpg").write_bytes(b"garbage")
    (folder / "test" / "cat").mkdir(parents=True)
    (folder / "test" / "cat" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="0.jpg"):
        convert("cifar10", source=folder, out=tmp_path / "o", log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_offline_download_names_source(tmp_path, monkeypatch):
    import fasttrain.data.convert as conv

    def no_network(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(SourceError, match="--source"):
        conv.convert("cifar10", out=tmp_path / "o", log=lambda s: None)


def test_real_jpeg_slice(cifar_tensor_slice):
    meta = read_meta(cifar_tensor_slice)
    assert meta["classes"] == CLASSES10
    assert meta["splits"]["train"]["class_counts"] == [30] * 10
    assert meta["splits"]["test"]["count"] == 100
    check_dataset(cifar_tensor_slice, full=True)
    train = load_split(cifar_tensor_slice, "train")
    assert train.images.shape == (300, 32, 32, 3)
    # real photos: channel means well inside (0, 1) and not constant
    assert 0.3 < np.mean(meta["mean"]) < 0.7 and min(meta["std"]) > 0.1
