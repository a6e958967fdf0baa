"""Tiny ImageNet, Cars196 and image-folder converters on tiny fixtures built here in each official layout.

Images are real JPEG/PNG files; expected pixels come from decoding the same bytes (PNG: the array itself).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrain.data.cars196 import box_in_image
from fasttrain.data.convert import convert
from fasttrain.data.decode import decode_image
from fasttrain.data.errors import SourceError
from fasttrain.data.tensor_format import load_split, read_meta
from fasttrain.data.verify import check_dataset, is_complete

QUIET = dict(log=lambda s: None)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _zip_dir(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src.parent).as_posix())
    return dest


# ============================================================================ Tiny ImageNet
WNIDS = ["n02124075", "n01443537", "n04067472"]  # deliberately unsorted: label order is wnids.txt order


def make_tiny_imagenet(base: Path, rng, train_per=3, val_per=2, n_test=2) -> tuple[Path, dict]:
    """The official tiny-imagenet-200 folder, shrunk to 3 classes; returns (root, expected arrays)."""
    root = base / "tiny-imagenet-200"
    _write(root, "wnids.txt", ("\n".join(WNIDS) + "\n").encode())
    words = "n00001740\tentity\nn02124075\tEgyptian cat\nn01443537\tgoldfish, Carassius auratus\n"
    _write(root, "words.txt", words.encode())  # n04067472 deliberately missing: its name falls back to the wnid
    expected: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for label, wnid in enumerate(WNIDS):
        boxes = []
        for k in range(train_per):
            im = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            if label == 0 and k == 0:  # one grayscale JPEG, as in the real set: must come out RGB
                data = _jpeg(im[..., 0])
            else:
                data = _jpeg(im)
            _write(root, f"train/{wnid}/images/{wnid}_{k}.JPEG", data)
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63")
            expected["train"][0].append(decode_image(data, "x"))
            expected["train"][1].append(label)
        _write(root, f"train/{wnid}/{wnid}_boxes.txt", "\n".join(boxes).encode())
    ann = []
    vals = []
    for i in range(val_per * len(WNIDS)):
        label = (i * 2) % len(WNIDS)
        im = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        data = _jpeg(im)
        _write(root, f"val/images/val_{i}.JPEG", data)
        ann.append(f"val_{i}.JPEG\t{WNIDS[label]}\t1\t2\t30\t40")
        vals.append((label, f"val_{i}.JPEG", decode_image(data, "x")))
    _write(root, "val/val_annotations.txt", ("\n".join(ann) + "\n").encode())
    for label, _, im in sorted(vals, key=lambda v: (v[0], v[1])):  # written grouped by class, then file name
        expected["test"][0].append(im)
        expected["test"][1].append(label)
    for i in range(n_test):
        _write(root, f"test/images/test_{i}.JPEG", _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    return root, {k: (np.stack(v[0]), np.asarray(v[1])) for k, v in expected.items()}


def _assert_splits(out: Path, expected: dict) -> None:
    assert is_complete(out)
    check_dataset(out, full=True)
    for split, (images, labels) in expected.items():
        got = load_split(out, split)
        np.testing.assert_array_equal(np.asarray(got.labels), labels)
        np.testing.assert_array_equal(np.asarray(got.images), images)


def test_tinyimagenet_folder_and_zip(tmp_path):
    root, expected = make_tiny_imagenet(tmp_path / "src", np.random.default_rng(0))
    # The val split is written grouped by class; sort the expectation the same way (stable, by label).
    notes = []
    out = convert("tinyimagenet", source=root, out=tmp_path / "folder", log=notes.append)
    meta = read_meta(out)
    assert meta["classes"] == WNIDS and meta["num_classes"] == 3
    assert meta["class_names"] == ["Egyptian cat", "goldfish, Carassius auratus", "n04067472"]
    assert meta["shape"] == [64, 64, 3] and sorted(meta["splits"]) == ["test", "train"]
    assert meta["skipped"] == {"count": 0, "files": []}
    assert any("official test split (2 images) has no labels" in n for n in notes)
    _assert_splits(out, expected)
    assert len(meta["test_boxes"]) == 6 and meta["test_boxes"][0] == [1, 2, 30, 40]

    zipped = _zip_dir(root, tmp_path / "tiny-imagenet-200.zip")
    out_zip = convert("tinyimagenet", source=zipped, out=tmp_path / "zip", **QUIET)
    _assert_splits(out_zip, expected)


def test_tinyimagenet_bad_files(tmp_path):
    root, expected = make_tiny_imagenet(tmp_path / "src", np.random.default_rng(1))
    bad = f"train/{WNIDS[1]}/images/{WNIDS[1]}_1.JPEG"
    good = (root / bad).read_bytes()
    (root / bad).write_bytes(good[: len(good) // 3])  # truncated JPEG
    with pytest.raises(SourceError, match=f"{WNIDS[1]}_1.JPEG"):
        convert("tinyimagenet", source=root, out=tmp_path / "a", **QUIET)
    assert not (tmp_path / "a").exists()

    out = convert("tinyimagenet", source=root, out=tmp_path / "b", skip_bad=True, **QUIET)
    meta = read_meta(out)
    assert meta["skipped"]["count"] == 1 and meta["skipped"]["files"][0]["file"].endswith(bad)
    assert "cannot decode" in meta["skipped"]["files"][0]["error"]
    labels = np.asarray(load_split(out, "train").labels)
    assert len(labels) == len(expected["train"][1]) - 1 and (labels == 1).sum() == 2

    # a val image without a label is never dropped silently either
    _write(root, "val/images/stray.JPEG", good)
    with pytest.raises(SourceError, match="stray.JPEG.*not labelled"):
        convert("tinyimagenet", source=root, out=tmp_path / "c", **QUIET)


def test_tinyimagenet_layout_errors(tmp_path):
    root, _ = make_tiny_imagenet(tmp_path / "src", np.random.default_rng(2))
    (root / "val/val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(SourceError, match="val_annotations.txt:1"):
        convert("tinyimagenet", source=root, out=tmp_path / "o", **QUIET)
    (root / "wnids.txt").unlink()
    with pytest.raises(SourceError, match="no wnids.txt"):
        convert("tinyimagenet", source=root, out=tmp_path / "o", **QUIET)


# ============================================================================ Cars196
CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012", "BMW M3 Coupe 2012"]


def _mat_struct(rows: list[dict]) -> np.ndarray:
    fields = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(rows):
        arr[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else v for v in r.values())
    return arr


def _savemat(path: Path, **variables) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)


def _class_cell() -> np.ndarray:
    cell = np.empty((1, len(CAR_CLASSES)), dtype=object)
    cell[0, :] = CAR_CLASSES
    return cell


def make_car_images(rng, n=10):
    """Images of varied sizes and aspect ratios (like the real set), as (png bytes, array)."""
    out = []
    for i in range(n):
        h, w = (30, 40) if i % 2 else (50, 36)
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append((_png(im), im))
    return out


def make_cars_annos(base: Path, rng) -> tuple[Path, list[dict]]:
    """cars_annos.mat + car_ims/ (the all-in-one release)."""
    rows, images = [], make_car_images(rng)
    for i, (data, im) in enumerate(images):
        cls = i % 4 + 1
        name = f"car_ims/{i + 1:06d}.jpg"  # PNG bytes under .jpg: decoding goes by content
        _write(base, name, data)
        h, w = im.shape[:2]
        rows.append(dict(relative_im_path=name, bbox_x1=2, bbox_y1=3, bbox_x2=w - 1, bbox_y2=h - 2, **{"class": cls},
                         test=i % 3 == 0))
    _savemat(base / "cars_annos.mat", annotations=_mat_struct(rows), class_names=_class_cell())
    return base, [dict(r, data=images[i][0], size=(images[i][1].shape[1], images[i][1].shape[0]))
                  for i, r in enumerate(rows)]


def _expected_cars(rows: list[dict], size: int):
    splits = {}
    for split, classes in (("train", {1, 2}), ("test", {3, 4})):
        sel = sorted((r for r in rows if r["class"] in classes), key=lambda r: (r["class"], r["relative_im_path"]))
        splits[split] = (np.stack([decode_image(r["data"], "x", size) for r in sel]),
                         np.asarray([r["class"] - 1 for r in sel]))
    return splits


def test_cars196_annos_layout(tmp_path):
    pytest.importorskip("scipy")
    src, rows = make_cars_annos(tmp_path / "cars", np.random.default_rng(3))
    notes = []
    out = convert("cars196", source=src, out=tmp_path / "out", size=16, log=notes.append)
    meta = read_meta(out)
    assert meta["classes"] == CAR_CLASSES and meta["shape"] == [16, 16, 3]
    assert meta["retrieval_split"] == {"train_classes": [0, 1], "test_classes": [2, 3]}
    _assert_splits(out, _expected_cars(rows, 16))
    # per-image records line up with the stored order
    train = meta["images"]["train"]
    by_name = {r["relative_im_path"]: r for r in rows}
    for f, box, wh, off in zip(train["files"], train["boxes"], train["original_size"], train["official_test"]):
        r = by_name[f]
        assert box == [r["bbox_x1"], r["bbox_y1"], r["bbox_x2"], r["bbox_y2"]]
        assert tuple(wh) == r["size"] and off == r["test"]
    assert any("4 classes" in n for n in notes)


@pytest.mark.parametrize("header, message", [
    (b"MATLAB 7.3 MAT-file".ljust(124, b" ") + bytes([0, 2]) + b"IM" + bytes(64), "MATLAB 7.3 .HDF5."),
    (bytes(40), "not a readable MATLAB file"),  # truncated / zeroed: scipy's MatReadError
    (b"garbage" * 30, "not a readable MATLAB file"),
])
def test_cars196_unreadable_annotations_are_named(tmp_path, header, message):
    pytest.importorskip("scipy")
    src, _ = make_cars_annos(tmp_path / "cars", np.random.default_rng(3))
    (src / "cars_annos.mat").write_bytes(header)
    with pytest.raises(SourceError, match=message) as e:
        convert("cars196", source=src, out=tmp_path / "out", size=16)
    assert "cars_annos.mat" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cars196_devkit_layout_with_tgz(tmp_path):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(4)
    base = tmp_path / "stanford_cars"
    images = make_car_images(rng, 8)
    rows = {"cars_train": [], "cars_test": []}
    for i, (data, im) in enumerate(images):
        folder = "cars_train" if i < 4 else "cars_test"
        fname = f"{i:05d}.jpg"
        _write(base, f"{folder}/{fname}", data)
        h, w = im.shape[:2]
        rows[folder].append(dict(bbox_x1=1, bbox_y1=1, bbox_x2=w, bbox_y2=h, **{"class": i % 4 + 1}, fname=fname))
    _savemat(base / "devkit/cars_meta.mat", class_names=_class_cell())
    _savemat(base / "devkit/cars_train_annos.mat", annotations=_mat_struct(rows["cars_train"]))
    with pytest.raises(SourceError, match="cars_test_annos_withlabels.mat"):
        convert("cars196", source=base, out=tmp_path / "o", **QUIET)
    _savemat(base / "cars_test_annos_withlabels.mat", annotations=_mat_struct(rows["cars_test"]))
    # pack the image folders into one tgz beside the .mat files: read in place
    with tarfile.open(base / "images.tgz", "w:gz") as tar:
        for folder in ("cars_train", "cars_test"):
            tar.add(base / folder, arcname=folder)
    for p in sorted(base.glob("cars_*/*.jpg")):
        p.unlink()
    out = convert("cars196", source=base, out=tmp_path / "o", size=12, **QUIET)
    meta = read_meta(out)
    labels = {s: np.asarray(load_split(out, s).labels) for s in ("train", "test")}
    assert set(labels["train"]) == {0, 1} and set(labels["test"]) == {2, 3}
    assert len(labels["train"]) + len(labels["test"]) == 8
    flags = meta["images"]["train"]["official_test"] + meta["images"]["test"]["official_test"]
    files = meta["images"]["train"]["files"] + meta["images"]["test"]["files"]
    assert all(f.startswith("cars_test/") == t for f, t in zip(files, flags))


def test_box_in_image_follows_the_resize_and_crop():
    # 40 wide x 20 high, size 10: resized to 20 x 10, 5 px cropped off the left
    assert box_in_image([11, 1, 30, 20], [40, 20], 10) == [0.0, 0.0, 10.0, 10.0]
    assert box_in_image([1, 1, 40, 20], [40, 20], 10) == [0.0, 0.0, 10.0, 10.0]  # clipped
    # check against pixels: a white box drawn in the original lands where the mapping says
    im = np.zeros((20, 40, 3), dtype=np.uint8)
    im[4:12, 16:28] = 255  # 1-based box (17, 5, 28, 12)
    x1, y1, x2, y2 = box_in_image([17, 5, 28, 12], [40, 20], 10)
    got = decode_image(_png(im), "x", 10)[..., 0] > 127
    ys, xs = np.nonzero(got)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


# ============================================================================ image folders
def make_folder(root: Path, rng, splits=("train", "test"), classes=("cat", "dog", "eel"), per=4, shape=(8, 8)):
    expected = {}
    for split in splits:
        ims, labels = [], []
        for label, cls in enumerate(classes):
            for k in range(per):
                im = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
                _write(root, f"{split}/{cls}/{k:03d}.png" if split else f"{cls}/{k:03d}.png", _png(im))
                ims.append(im)
                labels.append(label)
        expected[split or "all"] = (np.stack(ims), np.asarray(labels))
    return expected


def test_imagefolder_with_splits_from_tar(tmp_path):
    rng = np.random.default_rng(5)
    expected = make_folder(tmp_path / "tree" / "mydata", rng)
    tar_path = tmp_path / "mydata.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "mydata", arcname="mydata")
    out = convert("imagefolder", source=tar_path, name="pets", out=tmp_path / "pets", **QUIET)
    meta = read_meta(out)
    assert meta["name"] == "pets" and meta["classes"] == ["cat", "dog", "eel"]
    _assert_splits(out, expected)


def test_imagefolder_val_becomes_test(tmp_path):
    expected = make_folder(tmp_path / "src", np.random.default_rng(6), splits=("train", "valid"))
    notes = []
    out = convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o", log=notes.append)
    _assert_splits(out, {"train": expected["train"], "test": expected["valid"]})
    assert read_meta(out)["split_sources"] == {"test": "the 'val' folder"}
    assert any("'val' folder is written as the 'test' split" in n for n in notes)
    with pytest.raises(SourceError, match="--val-fraction"):
        convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o2", val_fraction=0.2, **QUIET)


def test_imagefolder_without_splits_holds_out_a_stratified_fraction(tmp_path):
    expected = make_folder(tmp_path / "src", np.random.default_rng(7), splits=("",), per=10)
    out = convert("imagefolder", source=tmp_path / "src", name="flat", out=tmp_path / "o", val_fraction=0.3, **QUIET)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert np.bincount(np.asarray(test.labels)).tolist() == [3, 3, 3]
    assert np.bincount(np.asarray(train.labels)).tolist() == [7, 7, 7]
    # together they are exactly the source images, each once
    all_images, all_labels = expected["all"]
    got = np.concatenate([np.asarray(train.images), np.asarray(test.images)])
    got_labels = np.concatenate([np.asarray(train.labels), np.asarray(test.labels)])
    key = lambda ims: sorted(im.tobytes() for im in ims)  # noqa: E731
    assert key(got) == key(all_images)
    for im, lb in zip(got, got_labels):
        assert lb == all_labels[next(i for i, a in enumerate(all_images) if np.array_equal(a, im))]
    # same seed, same split
    again = convert("imagefolder", source=tmp_path / "src", name="flat", out=tmp_path / "o2", val_fraction=0.3,
                    **QUIET)
    np.testing.assert_array_equal(np.asarray(load_split(again, "test").images), np.asarray(test.images))


def test_imagefolder_sizes_bad_files_and_options(tmp_path):
    rng = np.random.default_rng(8)
    make_folder(tmp_path / "src", rng, per=2)
    _write(tmp_path / "src", "train/dog/big.png", _png(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)))
    with pytest.raises(SourceError, match=r"differ in size.*--size"):
        convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o", **QUIET)
    out = convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o", size=6, **QUIET)
    assert read_meta(out)["shape"] == [6, 6, 3] and read_meta(out)["splits"]["train"]["count"] == 7

    _write(tmp_path / "src", "train/eel/notes.txt", b"hello")
    _write(tmp_path / "src", "train/cat/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SourceError, match="notes.txt"):
        convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o3", size=6, **QUIET)
    (tmp_path / "src/train/eel/notes.txt").unlink()
    with pytest.raises(SourceError, match="broken.jpg"):
        convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o3", size=6, **QUIET)
    _write(tmp_path / "src", "train/eel/notes.txt", b"hello")
    out = convert("imagefolder", source=tmp_path / "src", name="x", out=tmp_path / "o3", size=6, skip_bad=True,
                  **QUIET)
    skipped = read_meta(out)["skipped"]
    assert skipped["count"] == 2
    assert sorted(Path(f["file"]).name for f in skipped["files"]) == ["broken.jpg", "notes.txt"]
    assert read_meta(out)["splits"]["train"]["count"] == 7

    with pytest.raises(SourceError, match="--name"):
        convert("imagefolder", source=tmp_path / "src", out=tmp_path / "o4", **QUIET)
    with pytest.raises(SourceError, match=r"--size: not an option of dataset 'cifar10'"):
        convert("cifar10", source=tmp_path / "src", out=tmp_path / "o5", size=8, **QUIET)


def test_cli_convert_imagefolder(tmp_path):
    make_folder(tmp_path / "src", np.random.default_rng(9), splits=("",), per=5)
    _write(tmp_path / "src", "cat/zzz.png", b"garbage")
    cmd = [sys.executable, "-m", "fasttrain", "convert", "imagefolder", "--source", str(tmp_path / "src"),
           "--name", "toy", "--out", str(tmp_path / "toy"), "--val-fraction", "0.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "zzz.png" in proc.stderr and "--skip-bad" in proc.stderr
    proc = subprocess.run(cmd + ["--skip-bad"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad file" in proc.stdout
    meta = read_meta(tmp_path / "toy")
    assert meta["name"] == "toy" and meta["skipped"]["count"] == 1
    assert meta["splits"]["train"]["count"] + meta["splits"]["test"]["count"] == 15
