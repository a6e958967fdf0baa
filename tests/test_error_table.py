"""The message rule over the real CLI, for the hostile inputs of the last review: each answers exit code 2
and exactly one `error:` line on stderr that names the file (and the archive member), says what was
expected and what to do, and shows no library internals. Files are built by the test."""

from __future__ import annotations

import codecs
import io
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_bombs import deflate_zeros
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.data.tensor_format import Split, write_tensor_dataset

INTERNALS = ("Traceback", "miniz", "PytorchStreamReader", "DefaultCPUAllocator", "ValueError", "KeyError",
             "<unicode string>", "ParserError", "TOMLDecodeError")


def _png(path: Path, size: int = 8, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class _Rot13:
    """Pickles as a call of `_codecs.encode(text, 'rot13')`: not the latin1 bytes a CIFAR batch holds."""

    def __reduce__(self):
        return codecs.encode, ("uryyb", "rot13")


def _cifar10_python(path: Path, batch_1: dict) -> Path:
    """The official python-version layout (bytes keys), with `batch_1` as data_batch_1."""
    rows = np.zeros((2, 3072), dtype=np.uint8)
    good = {b"data": rows, b"labels": [0, 1]}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/batches.meta",
             pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2))
        for i in range(1, 6):
            _add(tar, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(batch_1 if i == 1 else good, protocol=2))
        _add(tar, "cifar-10-batches-py/test_batch", pickle.dumps(good, protocol=2))
    return path


def _image_bomb_png(width: int, height: int) -> bytes:
    """A bi-level PNG of width x height pixels, all black: a few kB that announce hundreds of megapixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\0" + bytes((width + 7) // 8)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("error_table")
    rng = np.random.default_rng(0)
    splits = {"train": Split(rng.integers(0, 256, (400, 8, 8, 3), dtype=np.uint8), np.arange(400) % 2),
              "test": Split(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 2)}
    ds = write_tensor_dataset(root / "ds400", splits, ["a", "b"], name="ds400", source="test")
    # a finished one-epoch run, then a copy whose checkpoint was cut in half (and not finished: resumable)
    res = CliRunner().invoke(app, ["run", "resnet9", "--data", str(ds), "--epochs", "1", "--width", "0.125",
                                   "--device", "cpu", "--batch-size", "200", "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    shutil.copytree(root / "run", root / "run_cut")
    ckpt = (root / "run" / "checkpoint.pt").read_bytes()
    (root / "run_cut" / "checkpoint.pt").write_bytes(ckpt[: len(ckpt) // 2])
    (root / "run_cut" / "summary.json").unlink()
    (root / "cut.pt").write_bytes(ckpt[: len(ckpt) // 3])
    (root / "empty.pt").write_bytes(b"")
    _png(root / "img.png")
    # an image folder with an empty class folder in train
    for cls in ("a", "b"):
        for k in range(2):
            _png(root / "empty_class" / "train" / cls / f"{k}.png", seed=k)
            _png(root / "empty_class" / "test" / cls / f"{k}.png", seed=k)
    (root / "empty_class" / "train" / "c").mkdir()
    # a tar whose member climbs out of the folder it unpacks to
    with tarfile.open(root / "escape.tar", "w") as tar:
        for k, cls in enumerate(("a", "b")):
            _add(tar, f"train/{cls}/{k}.png", _png_bytes(k))
        _add(tar, "../ESCAPED.jpg", _png_bytes(3))
    # CIFAR-10 python archives: a label out of range; a rot13 _codecs.encode call
    _cifar10_python(root / "labels.tar.gz", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    _cifar10_python(root / "rot13.tar.gz", {b"data": _Rot13(), b"labels": [0, 1]})
    # config files that do not parse
    (root / "bad.yaml").write_text("lr: 0.1\nmilestones: [10, 20\n")
    (root / "bad.toml").write_text("lr = 0.1\nepochs = \n")
    (root / "bad.json").write_text('{"lr": 0.1,\n "epochs": }\n')
    # an image that announces 400 megapixels; a zip member that decompresses to 100 MB (100 kB stored)
    (root / "pixels" / "a").mkdir(parents=True)
    _png(root / "pixels" / "a" / "0.png")
    (root / "pixels" / "a" / "bomb.png").write_bytes(_image_bomb_png(20_000, 20_000))
    _png(root / "pixels" / "b" / "0.png")
    zeros, _ = deflate_zeros(100)
    with zipfile.ZipFile(root / "zeros.zip", "w") as zf:
        zf.writestr("train/a/0.png", _png_bytes(0))
        zf.writestr("train/b/0.png", _png_bytes(1))
    _zip_member_of_zeros(root / "zeros.zip", "train/a/big.jpg", 100)
    return {"root": root, "ds": ds, "run": root / "run", "run_cut": root / "run_cut"}


def _zip_member_of_zeros(path: Path, name: str, n_mb: int) -> None:
    """Append a deflated member of n_mb MiB of zeros to an existing zip (zipfile keeps the directory right)."""
    zeros, crc = deflate_zeros(n_mb)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = n_mb << 20, len(zeros), crc
        zf.fp.seek(zf.start_dir)
        info.header_offset = zf.fp.tell()
        zf.fp.write(info.FileHeader())
        zf.fp.write(zeros)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(info)
        zf.NameToInfo[name] = info
        zf._didModify = True


CUT = ["is truncated or not a fasttrain checkpoint", "re-run", "pick another checkpoint"]
CASES = [
    # (arguments, words the one error line must contain)
    (["run", "resnet9", "--data", "{ds}", "--val-split", "10000", "--device", "cpu", "--out", "{root}/r1"],
     ["--val-split", "[1, 399]", "400 train samples", "got 10000", "pass a smaller --val-split"]),
    (["run", "airbench", "--data", "{ds}", "--width", "1e6", "--device", "cpu", "--out", "{root}/r2"],
     ["airbench with --width 1e+06", "parameters need at least", "GiB", "available", "smaller --width"]),
    (["convert", "imagefolder", "--source", "{root}/empty_class", "--name", "e", "--out", "{root}/o1"],
     ["empty_class", "train/c/ is an empty class folder", "add them, or remove the folder"]),
    (["eval", "{root}/cut.pt"], ["cut.pt", *CUT, "zip container ends early"]),
    (["eval", "{root}/empty.pt"], ["empty.pt", *CUT, "the file is empty (0 bytes)"]),
    (["eval", "{run_cut}"], ["run_cut/checkpoint.pt", *CUT]),
    (["predict", "{root}/cut.pt", "{root}/img.png"], ["cut.pt", *CUT]),
    (["predict", "{run_cut}", "{root}/img.png"], ["run_cut/checkpoint.pt", *CUT]),
    (["export", "{root}/empty.pt", "--format", "safetensors", "--out", "{root}/m.safetensors"], ["empty.pt", *CUT]),
    (["export", "{run_cut}", "--format", "safetensors", "--out", "{root}/m.safetensors"],
     ["run_cut/checkpoint.pt", *CUT]),
    (["run", "--resume", "{run_cut}"], ["run_cut/checkpoint.pt", *CUT]),
    (["run", "resnet9", "--config", "{root}/bad.yaml"],
     ["--config", "bad.yaml:3:1", "not valid YAML", "expected ',' or ']'", "--print-config"]),
    (["run", "resnet9", "--config", "{root}/bad.toml"], ["bad.toml:2:10", "not valid TOML", "Invalid value"]),
    (["run", "resnet9", "--config", "{root}/bad.json"], ["bad.json:2:12", "not valid JSON", "Expecting value"]),
    (["convert", "imagefolder", "--source", "{root}/escape.tar", "--name", "x", "--out", "{root}/o2"],
     ["escape.tar:../ESCAPED.jpg", "escapes the archive", "remove it"]),
    (["convert", "cifar10", "--source", "{root}/labels.tar.gz", "--out", "{root}/o3"],
     ["labels.tar.gz:data_batch_1", "label 10", "10 classes", "download"]),
    (["convert", "cifar10", "--source", "{root}/rot13.tar.gz", "--out", "{root}/o4"],
     ["rot13.tar.gz:data_batch_1", "_codecs.encode", "'rot13'", "download"]),
    (["convert", "imagefolder", "--source", "{root}/no_such_folder", "--name", "x", "--out", "{root}/o5"],
     ["--source", "no_such_folder", "no such file or directory", "give the folder or archive"]),
    (["convert", "imagefolder", "--source", "{root}/pixels", "--name", "x", "--out", "{root}/o6"],
     ["a/bomb.png", "400 megapixels", "89-megapixel limit", "decompression bomb", "--skip-bad"]),
    (["convert", "imagefolder", "--source", "{root}/zeros.zip", "--name", "x", "--out", "{root}/o7"],
     ["zeros.zip:train/a/big.jpg", "decompresses past 64 MB", "--skip-bad"]),
]


def check_one_error_line(exit_code: int, stderr: str, output: str) -> str:
    """The message rule: exit 2; on stderr exactly one line starting with 'error: ', the last (a 'warning:'
    or 'note:' line may come before it); no library internals anywhere. Returns the error line."""
    assert exit_code == 2, (exit_code, output)
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert all(line.startswith(("warning: ", "note: ")) for line in lines[:-1]), stderr
    leaked = [word for word in INTERNALS if word in output or word in stderr]
    assert not leaked, (leaked, stderr)
    return errors[0]


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a[:2] + a[-1:]) for a, _ in CASES])
def test_hostile_input_is_one_clear_error_line(files, args, words):
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    line = check_one_error_line(res.exit_code, res.stderr, res.output)
    for word in words:
        assert word in line, (word, line)
    assert not any(p.name.startswith("o") and len(p.name) == 2 for p in files["root"].iterdir()), "output left"
