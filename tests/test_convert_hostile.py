"""Converters check what they read before casting it: hostile CIFAR batches (float pixels, text labels,
labels out of range, names that are not UTF-8) and Cars196 annotations (a NaN box, a class given as text)
end with one `error:` line naming the archive and the member, exit 2, and nothing written; names in
Latin-1 are read, not refused."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.data.tensor_format import read_meta

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar10_python(path: Path, *, names=NAMES, broken: dict | None = None) -> Path:
    """The official python layout (Python 2 pickles, bytes keys), 4 images per batch; `broken` replaces
    keys of data_batch_3."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
            if member == "data_batch_3":
                batch.update(broken or {})
            _add(tar, f"cifar-10-batches-py/{member}", pickle.dumps(batch, protocol=2))
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": names}, protocol=2))
    return path


def cifar10_binary(path: Path, names_text: bytes) -> Path:
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        for member in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            records = np.concatenate([np.array([[3], [7]], dtype=np.uint8),
                                      rng.integers(0, 256, (2, 3072), dtype=np.uint8)], axis=1)
            _add(tar, f"cifar-10-batches-bin/{member}", records.tobytes())
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", names_text)
    return path


def convert(*args):
    return CliRunner().invoke(app, ["convert", *map(str, args)])


def one_error(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    return errors[0]


FLOATS = np.random.default_rng(2).random((4, 3072)).astype(np.float32)  # pixels in [0, 1]
HOSTILE_CIFAR = {
    "float pixels in [0, 1]": ({b"data": FLOATS}, "data_batch_3: pixel data are float32"),
    "float64 pixels in [0, 255]": ({b"data": FLOATS.astype(np.float64) * 255}, "data_batch_3: pixel data are float64"),
    "pixels as int beyond 255": ({b"data": np.full((4, 3072), 300)}, "data_batch_3: pixel values 300..300"),
    "labels given as text": ({b"labels": [b"cat", b"dog", b"cat", b"dog"]}, "data_batch_3: labels must be"),
    "labels as floats": ({b"labels": [0.5, 1.0, 2.0, 3.0]}, "data_batch_3: labels must be"),
    "a label out of range": ({b"labels": [0, 1, 10, 2]}, "data_batch_3: label 10 is outside 0..9"),
    "fewer labels than images": ({b"labels": [0, 1]}, "data_batch_3: 2 labels for 4 images"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CIFAR))
def test_hostile_cifar_batches_are_named(case, tmp_path):
    broken, message = HOSTILE_CIFAR[case]
    archive = cifar10_python(tmp_path / "cifar.tar.gz", broken=broken)
    error = one_error(convert("cifar10", "--source", archive, "--out", tmp_path / "out"))
    assert f"{archive}:" in error and message in error, error
    assert not (tmp_path / "out").exists()


def test_class_names_that_are_not_text_are_named(tmp_path):
    archive = cifar10_python(tmp_path / "cifar.tar.gz", names=list(range(10)))
    error = one_error(convert("cifar10", "--source", archive, "--out", tmp_path / "out"))
    assert f"{archive}:batches.meta" in error and "class names must be text" in error


def test_latin1_class_names_are_read(tmp_path):
    latin1 = [b"caf\xe9"] + NAMES[1:]  # not UTF-8
    archive = cifar10_python(tmp_path / "cifar.tar.gz", names=latin1)
    res = convert("cifar10", "--source", archive, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert read_meta(tmp_path / "out")["classes"][0] == "café"
    binary = cifar10_binary(tmp_path / "bin.tar.gz", "\n".join(["café"] + [n.decode() for n in NAMES[1:]])
                            .encode("latin-1"))
    res = convert("cifar10", "--source", binary, "--out", tmp_path / "out-bin")
    assert res.exit_code == 0, res.output
    meta = read_meta(tmp_path / "out-bin")
    assert meta["classes"][0] == "café"
    assert np.array_equal(np.load(tmp_path / "out-bin" / "train_labels.npy")[:2], [3, 7])


def _cars(base: Path, *, bad: dict) -> Path:
    """cars_annos.mat + car_ims/ with two images; `bad` replaces fields of the second annotation."""
    scipy_io = pytest.importorskip("scipy.io")
    from PIL import Image

    rows = []
    for i in range(2):
        name = f"car_ims/{i + 1:06d}.jpg"
        (base / "car_ims").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(base / name, format="JPEG")
        rows.append(dict(relative_im_path=name, bbox_x1=2.0, bbox_y1=3.0, bbox_x2=20.0, bbox_y2=15.0,
                         **{"class": float(i + 1)}, test=0.0))
    rows[1].update(bad)
    annotations = np.zeros((1, 2), dtype=[(f, "O") for f in rows[0]])
    for i, r in enumerate(rows):
        annotations[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else v for v in r.values())
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["Acura RL Sedan 2012", "BMW M3 Coupe 2012"]
    scipy_io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return base


@pytest.mark.parametrize("bad, named", [
    ({"bbox_x1": float("nan")}, "bbox_x1 is nan"),
    ({"class": "abc"}, "class is 'abc'"),
    ({"bbox_y2": 7.5}, "bbox_y2 is 7.5"),
])
def test_hostile_cars_annotations_are_named(bad, named, tmp_path):
    source = _cars(tmp_path / "cars", bad=bad)
    error = one_error(convert("cars196", "--source", source, "--out", tmp_path / "out", "--size", 16))
    assert f"{source}:cars_annos.mat" in error and named in error, error
    assert not (tmp_path / "out").exists()
