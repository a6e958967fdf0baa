"""Images decoded faithfully or refused by name: image modes, decompression bombs, links and special
files, nested and truncated archives, one-class and one-split sources. Every file is built here."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrain.data.archive import read_regular_file
from fasttrain.data.convert import convert
from fasttrain.data.decode import decode_image, decode_image_file
from fasttrain.data.errors import DatasetError, SourceError
from fasttrain.data.tensor_format import load_split, read_meta

QUIET = dict(log=lambda s: None)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rand(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _folder(root: Path, classes=("cat", "dog"), per_class=2, size=8) -> Path:
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            for k in range(per_class):
                path = root / split / cls / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_rand((size, size, 3), seed=c * 100 + k)).save(path)
    return root


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO or /dev/zero that were opened would hang the test: fail it instead."""
    def boom(*_):
        raise TimeoutError("hung: a special file was opened")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- modes
def test_16bit_grey_is_scaled_not_clipped():
    """The reproduction: a 16-bit grey PNG (source mean ~130 of 255) came out near white (254.5)."""
    values = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint16) * 257  # 8-bit values, 16-bit range
    out = decode_image(_save(Image.fromarray(values)), "grey16.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[..., 0], values // 257)
    assert abs(out.mean() - (values / 257).mean()) < 0.01 and out.mean() < 200


def _composited(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(np.float64) * alpha[..., None] / 255).astype(np.uint8)


def test_alpha_is_composited_on_black():
    rgb, alpha = _rand((8, 8, 3)), _rand((8, 8), seed=1)
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgba = decode_image(_save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), "a.png")
    np.testing.assert_array_equal(rgba, _composited(rgb, alpha))
    assert rgba[0, 0].tolist() == [0, 0, 0] and rgba[0, 1].tolist() == rgb[0, 1].tolist()
    grey = rgb[..., 0]
    la = decode_image(_save(Image.fromarray(np.dstack([grey, alpha]), "LA")), "la.png")
    np.testing.assert_array_equal(la, _composited(np.repeat(grey[..., None], 3, 2), alpha))
    # a palette image with one transparent entry
    pal = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    p = decode_image(_save(pal, transparency=5), "p.png")
    assert p[0, 5].tolist() == [0, 0, 0] and p[0, 6].tolist() == [6, 249, 7]


def test_cmyk_and_other_modes():
    cmyk = Image.fromarray(_rand((8, 8, 4)), "CMYK")
    data = _save(cmyk, "JPEG", quality=95)
    np.testing.assert_array_equal(decode_image(data, "c.jpg"), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    bilevel = decode_image(_save(Image.fromarray(_rand((8, 8)) > 128)), "b.png")
    assert set(np.unique(bilevel)) <= {0, 255}
    with pytest.raises(SourceError, match=r"f\.tif: .*floating-point"):
        decode_image(_save(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"), "f.tif")


# ----------------------------------------------------------------------------- decompression bombs
def _png_header(w: int, h: int) -> bytes:
    """A PNG that announces w x h pixels and holds almost nothing (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _jpeg_header(w: int, h: int) -> bytes:
    data = bytearray(_save(Image.fromarray(_rand((8, 8, 3))), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@pytest.mark.parametrize("name,data", [("bomb.png", _png_header(100_000, 100_000)),
                                       ("bomb.jpg", _jpeg_header(65_000, 65_000)),
                                       ("warn.png", _png_header(10_000, 10_000))])  # over the limit, under 2x
def test_decompression_bomb_is_refused_by_name(name, data, tmp_path):
    with pytest.raises(SourceError, match=rf"{name}: \d+ megapixels, over the 89-megapixel limit .* refused as a "
                       "possible decompression bomb, not decoded"):
        decode_image(data, name)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SourceError, match="decompression bomb"):  # what `fasttrain predict` decodes with
        decode_image_file(path, size=32)
    src = _folder(tmp_path / "src")
    (src / "train" / "cat" / name).write_bytes(data)
    with pytest.raises(SourceError, match=rf"{name}.*--skip-bad"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "a", **QUIET)
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "b", skip_bad=True, **QUIET)
    skipped = read_meta(out)["skipped"]
    assert skipped["count"] == 1 and skipped["files"][0]["file"].endswith(name)
    assert "decompression bomb" in skipped["files"][0]["error"]


# ----------------------------------------------------------------------------- links and special files
def test_links_and_special_files_in_a_folder(tmp_path):
    src = _folder(tmp_path / "src")
    cat = src / "train" / "cat"
    os.mkfifo(cat / "fifo.jpg")
    (cat / "zero.jpg").symlink_to("/dev/zero")
    (cat / "link.png").symlink_to(cat / "0.png")
    (src / "train" / "dirlink").symlink_to(cat)
    before = read_regular_file(cat / "0.png")
    with pytest.raises(SourceError, match=r"(fifo\.jpg|zero\.jpg|link\.png|dirlink).*--skip-bad"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "a", **QUIET)
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "b", skip_bad=True, **QUIET)
    files = {Path(f["file"]).name: f["error"] for f in read_meta(out)["skipped"]["files"]}
    assert files == {"fifo.jpg": "a FIFO", "zero.jpg": "a symbolic link", "link.png": "a symbolic link",
                     "dirlink": "a symbolic link to a directory"}
    assert read_meta(out)["splits"]["train"]["count"] == 4 and read_regular_file(cat / "0.png") == before


def test_special_files_are_never_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(SourceError, match="a FIFO"):
        read_regular_file(tmp_path / "fifo.jpg")
    with pytest.raises(SourceError, match="a character device"):
        decode_image_file(tmp_path / "zero.jpg")
    with pytest.raises(SourceError, match="a directory"):  # `fasttrain predict DIR`
        decode_image_file(tmp_path)
    with pytest.raises(SourceError, match="missing.jpg: cannot read"):
        decode_image_file(tmp_path / "missing.jpg")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * 100)
    with pytest.raises(SourceError, match="100 bytes, over the limit of 10 bytes for one file"):
        read_regular_file(big, cap=10)


def _tar_with_links(path: Path, image: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                info = tarfile.TarInfo(f"{split}/{cls}/0.png")
                info.size = len(image)
                tar.addfile(info, io.BytesIO(image))
        sym = tarfile.TarInfo("train/cat/sym.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "0.png"
        hard = tarfile.TarInfo("train/cat/hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "train/cat/0.png"
        fifo = tarfile.TarInfo("train/cat/fifo.png")
        fifo.type = tarfile.FIFOTYPE
        for info in (sym, hard, fifo):
            tar.addfile(info)


def test_link_members_of_an_archive_are_recorded(tmp_path):
    """The reproduction: symlink and hardlink members were dropped with skipped.count 0."""
    src = tmp_path / "links.tar"
    _tar_with_links(src, _save(Image.fromarray(_rand((8, 8, 3)))))
    with pytest.raises(SourceError, match="link member.*--skip-bad"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "a", **QUIET)
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "b", skip_bad=True, **QUIET)
    skipped = read_meta(out)["skipped"]
    assert skipped["count"] == 3
    assert sorted(f["error"] for f in skipped["files"]) == ["a FIFO member", "a hard link member",
                                                            "a symbolic link member"]


# ----------------------------------------------------------------------------- archives
def test_nested_archive_is_not_merged_over_real_files(tmp_path):
    """The reproduction: a nested old.tar replaced the real train/cat/0.png."""
    src = _folder(tmp_path / "src")
    real = np.asarray(Image.open(src / "train" / "cat" / "0.png"))
    with tarfile.open(src / "train" / "old.tar", "w") as tar:
        data = _save(Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match=r"train/old\.tar: not an image file"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "a", **QUIET)
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "b", skip_bad=True, **QUIET)
    np.testing.assert_array_equal(load_split(out, "train").images[0], real)
    # an archive at the top of the source is read in place, but may not shadow a real file
    (src / "train" / "old.tar").rename(src / "extra.tar")
    with pytest.raises(SourceError, match=r"extra\.tar:train/cat/0\.png has the same path as"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "c", **QUIET)


def _cifar_folder(root: Path, splits=("train", "test"), odd: str | None = None) -> Path:
    for split in splits:
        for c, cls in enumerate(CIFAR_CLASSES):
            path = root / split / cls / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            size = 16 if f"{split}/{cls}" == odd else 32
            Image.fromarray(_rand((size, size, 3), seed=c)).save(path)
    return root


def _tgz(path: Path, folder: Path, arcname: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


def test_truncated_archives_are_named(tmp_path):
    folder = _cifar_folder(tmp_path / "folder")
    for i in range(20):  # incompressible bulk, so that a cut lands inside the members
        (folder / "train" / "cat" / f"n{i}.png").write_bytes(_save(Image.fromarray(_rand((64, 64, 3), seed=i))))
    whole = _tgz(tmp_path / "c10.tar.gz", folder, "c10").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    for dataset, extra in (("cifar10", {}), ("imagefolder", {"name": "t"})):
        with pytest.raises(SourceError, match=r"cut\.tar\.gz: the tar archive is truncated or corrupt"):
            convert(dataset, source=cut, out=tmp_path / f"o-{dataset}", **extra, **QUIET)
    # the shape of the offline copy: one tarball per split, one of them cut short
    per_split = tmp_path / "per_split"
    per_split.mkdir()
    _tgz(per_split / "test.tar.gz", folder / "test", "test")
    train = _tgz(tmp_path / "train.tar.gz", folder / "train", "train").read_bytes()
    (per_split / "train.tar.gz").write_bytes(train[: len(train) // 2])
    with pytest.raises(SourceError, match=r"train\.tar\.gz: the tar archive is truncated"):
        convert("cifar10", source=per_split, out=tmp_path / "o", **QUIET)
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "convert", "cifar10", "--source", str(per_split),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "truncated" in proc.stderr and "Aborted" not in proc.stderr + proc.stdout


def test_one_split_source_is_refused(tmp_path):
    """The reproduction: `convert --source .../train.tar.gz` succeeded and failed later."""
    folder = _cifar_folder(tmp_path / "folder", splits=("train",))
    train = _tgz(tmp_path / "train.tar.gz", folder / "train", "train")
    with pytest.raises(SourceError, match="no test split"):
        convert("cifar10", source=train, out=tmp_path / "o", **QUIET)
    assert not (tmp_path / "o").exists()


def test_cifar_mixed_sizes_do_not_suggest_size(tmp_path):
    src = _cifar_folder(tmp_path / "folder", odd="train/dog")
    with pytest.raises(SourceError, match="differ in size") as err:
        convert("cifar10", source=src, out=tmp_path / "o", **QUIET)
    assert "--size S" not in str(err.value) and "imagefolder" in str(err.value)


def test_one_class_is_refused(tmp_path):
    src = _folder(tmp_path / "src", classes=("cat",))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        convert("imagefolder", source=src, name="t", out=tmp_path / "o", **QUIET)
    assert not (tmp_path / "o").exists()


def test_top_level_documentation_is_ignored_with_a_note(tmp_path):
    src = _folder(tmp_path / "src")
    (src / "README.md").write_text("about")
    logs: list[str] = []
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "o", log=logs.append)
    assert any("ignored 1 non-image file" in m for m in logs)
    assert json.loads((out / "meta.json").read_text())["skipped"]["count"] == 0
