"""Readers for the raw forms a dataset arrives in, each returning uint8 NHWC arrays per split.

Supported sources:
- the official CIFAR python-version tarball (pickles, read with a restricted unpickler that admits only
  the numpy array constructors and plain data: a pickle that would call anything else is refused);
- the official CIFAR binary tarball (fixed-size records);
- an image folder `<split>/<class>/*.jpg|png`, a tar/tar.gz of one, or a directory holding one tarball
  per split (`train.tar.gz`, `test.tar.gz`, as in the offline CIFAR-10 JPEG copy).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .tensor_format import Split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class SourceError(RuntimeError):
    """A source archive or folder is missing, malformed or unsafe. The message names the file."""


# ----------------------------------------------------------------------------- restricted unpickling
def _numpy_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 moved the implementation to numpy._core; pickles name either module
        from numpy._core import multiarray as ma
        from numpy._core import numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma
        from numpy.core import numeric
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes in protocol 2 as _codecs.encode(text, 'latin1'): admit exactly that.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise SourceError(f"refusing _codecs.encode with encoding {encoding!r} (only latin1 is plain data)")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, numbers, strings, bytes and numpy arrays; refuses every other global."""

    def __init__(self, file, *, source_name: str):
        super().__init__(file, encoding="bytes")
        self._source_name = source_name
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise SourceError(
                f"{self._source_name}: refusing to unpickle global '{module}.{name}': a CIFAR archive may "
                "only hold plain data and numpy arrays (this file may be malicious or not a CIFAR batch)"
            )
        return obj


def safe_unpickle(data: bytes, source_name: str) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data), source_name=source_name).load()
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{source_name}: not a readable pickle ({type(e).__name__}: {e})") from e


def _key(d: dict, name: str):
    """Pickles from Python 2 have bytes keys; accept str keys too."""
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise SourceError(f"expected key {name!r} in CIFAR batch, found {sorted(map(str, d))}")


def _decode_names(names: Iterable) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# ----------------------------------------------------------------------------- official CIFAR archives
def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"{path}: not a readable tar archive ({e})") from e


def _tar_members_by_basename(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    return {PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()}


def _read_member(tar: tarfile.TarFile, members: dict, name: str, archive: Path) -> bytes:
    if name not in members:
        raise SourceError(f"{archive}: expected a member named {name!r}; is this the right archive?")
    f = tar.extractfile(members[name])
    assert f is not None
    return f.read()


def _rows_to_nhwc(rows: np.ndarray, source: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3072:
        raise SourceError(f"{source}: expected image rows of 3072 bytes (3x32x32), got shape {rows.shape}")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_cifar_python(path: Path, dataset: str) -> tuple[dict[str, Split], list[str]]:
    """Official `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`."""
    with _open_tar(path) as tar:
        members = _tar_members_by_basename(tar)

        def load(name: str) -> dict:
            obj = safe_unpickle(_read_member(tar, members, name, path), f"{path}:{name}")
            if not isinstance(obj, dict):
                raise SourceError(f"{path}:{name}: expected a dict, got {type(obj).__name__}")
            return obj

        if dataset == "cifar10":
            classes = _decode_names(_key(load("batches.meta"), "label_names"))
            parts = [load(f"data_batch_{i}") for i in range(1, 6)]
            test = load("test_batch")
            label_key = "labels"
        else:
            classes = _decode_names(_key(load("meta"), "fine_label_names"))
            parts = [load("train")]
            test = load("test")
            label_key = "fine_labels"

        def to_split(batches: list[dict], name: str) -> Split:
            images = np.concatenate([_rows_to_nhwc(_key(b, "data"), f"{path}:{name}") for b in batches])
            labels = np.concatenate([np.asarray(_key(b, label_key), dtype=np.int64) for b in batches])
            return Split(images, labels)

        return {"train": to_split(parts, "train"), "test": to_split([test], "test")}, classes


def read_cifar_binary(path: Path, dataset: str) -> tuple[dict[str, Split], list[str]]:
    """Official `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`: records of label byte(s) + 3072 pixels."""
    with _open_tar(path) as tar:
        members = _tar_members_by_basename(tar)
        if dataset == "cifar10":
            names_file, label_bytes, label_index = "batches.meta.txt", 1, 0
            train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
            test_files = ["test_batch.bin"]
        else:  # CIFAR-100 records are <coarse label><fine label><pixels>
            names_file, label_bytes, label_index = "fine_label_names.txt", 2, 1
            train_files, test_files = ["train.bin"], ["test.bin"]
        classes = [
            line.strip() for line in _read_member(tar, members, names_file, path).decode().splitlines()
            if line.strip()
        ]
        record = label_bytes + 3072

        def to_split(files: list[str]) -> Split:
            images, labels = [], []
            for name in files:
                raw = np.frombuffer(_read_member(tar, members, name, path), dtype=np.uint8)
                if raw.size % record:
                    raise SourceError(f"{path}:{name}: size {raw.size} is not a multiple of the "
                                      f"{record}-byte record; the archive is truncated or not {dataset}")
                raw = raw.reshape(-1, record)
                labels.append(raw[:, label_index].astype(np.int64))
                images.append(_rows_to_nhwc(raw[:, label_bytes:], f"{path}:{name}"))
            return Split(np.concatenate(images), np.concatenate(labels))

        return {"train": to_split(train_files), "test": to_split(test_files)}, classes


# ----------------------------------------------------------------------------- image folders and tars
def decode_image(data: bytes, name: str, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 HWC RGB; with `size`, resize the short side and centre-crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if size is not None:
                w, h = img.size
                scale = size / min(w, h)
                img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError as e:
        raise SourceError(f"{name}: cannot decode image (not a recognised image format)") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise SourceError(f"{name}: cannot decode image ({e})") from e


@dataclass(frozen=True)
class BadFile:
    """A file that could not be decoded, kept (with `skip_bad`) so the caller can record it."""

    file: str
    error: str


def _decode_chunk(args: tuple[list[tuple[str, bytes]], int | None, bool]) -> list[np.ndarray | BadFile]:
    items, size, skip_bad = args
    out: list[np.ndarray | BadFile] = []
    for name, data in items:
        try:
            out.append(decode_image(data, name, size))
        except SourceError as e:
            if not skip_bad:
                raise
            out.append(BadFile(name, str(e)))
    return out


def decode_many(
    items: list[tuple[str, bytes]],
    *,
    size: int | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = 512,
    skip_bad: bool = False,
) -> list[np.ndarray]:
    """Decode (name, bytes) pairs in parallel processes, preserving order.

    A file that does not decode raises `SourceError` naming it; with `skip_bad` it comes back as a
    `BadFile` in its place instead (see `split_bad`), so the caller can drop it and record it.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    chunks = [(items[i : i + chunk], size, skip_bad) for i in range(0, len(items), chunk)]
    out: list[np.ndarray] = []
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            out.extend(_decode_chunk(c))
            if progress:
                progress(len(c[0]))
        return out
    with ProcessPoolExecutor(workers) as pool:
        for c, decoded in zip(chunks, pool.map(_decode_chunk, chunks)):
            out.extend(decoded)
            if progress:
                progress(len(c[0]))
    return out


def split_bad(decoded: list) -> tuple[list[np.ndarray], list[int], list[BadFile]]:
    """(images, indices of the items they came from, bad files) from `decode_many(..., skip_bad=True)`."""
    images, kept, bad = [], [], []
    for i, d in enumerate(decoded):
        if isinstance(d, BadFile):
            bad.append(d)
        else:
            images.append(d)
            kept.append(i)
    return images, kept, bad


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _collect_from_tar(path: Path) -> list[tuple[str, bytes]]:
    """All image files in a tar as (path inside the tar, bytes), in the archive's order."""
    out = []
    with _open_tar(path) as tar:
        for m in tar:
            if m.isfile() and _is_image(m.name):
                f = tar.extractfile(m)
                assert f is not None
                out.append((m.name, f.read()))
    return out


def _collect_from_dir(path: Path) -> list[tuple[str, bytes]]:
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for fname in sorted(files):
            if _is_image(fname):
                full = Path(root) / fname
                out.append((full.relative_to(path).as_posix(), full.read_bytes()))
    return out


def collect_image_files(source: Path) -> list[tuple[str, bytes]]:
    """Image files under a folder, a tar, or a folder of per-split tars; paths relative, '/'-separated."""
    if source.is_file():
        if not source.name.endswith(TAR_SUFFIXES):
            raise SourceError(f"{source}: expected a directory or a .tar/.tar.gz/.tgz archive")
        return _collect_from_tar(source)
    if not source.is_dir():
        raise SourceError(f"{source}: no such file or directory")
    tars = sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIXES))
    files = _collect_from_dir(source)
    for t in tars:
        files.extend(_collect_from_tar(t))
    return files


def group_by_split_and_class(
    files: list[tuple[str, bytes]], source: Path, splits: tuple[str, ...] = ("train", "test")
) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """Group `<prefix>/<split>/<class>/<file>` paths; a leading prefix directory (e.g. a tar's top dir) is fine."""
    grouped: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for name, data in files:
        parts = PurePosixPath(name).parts
        idx = next((i for i, p in enumerate(parts[:-2]) if p in splits), None)
        if idx is None or len(parts) - idx != 3:
            raise SourceError(
                f"{source}: image {name!r} is not at <split>/<class>/<file> with split in {list(splits)}"
            )
        split, cls = parts[idx], parts[idx + 1]
        grouped.setdefault(split, {}).setdefault(cls, []).append((name, data))
    if "train" not in grouped:
        raise SourceError(f"{source}: found no images under a 'train/<class>/' folder")
    return grouped


def read_image_folder(
    source: Path,
    *,
    expected_classes: list[str] | None = None,
    size: int | None = None,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
) -> tuple[dict[str, Split], list[str]]:
    """Read `<split>/<class>/*` images (folder, tar, or per-split tars) into uint8 NHWC splits.

    Classes are the sorted class-folder names of the train split (for CIFAR this is the official order).
    Every split must use only those classes, and all images must share one size unless `size` is given.
    """
    grouped = group_by_split_and_class(collect_image_files(source), source)
    classes = sorted(grouped["train"])
    if expected_classes is not None and classes != list(expected_classes):
        raise SourceError(f"{source}: class folders {classes} differ from the expected {list(expected_classes)}")
    splits: dict[str, Split] = {}
    for split_name, by_class in sorted(grouped.items()):
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise SourceError(f"{source}: split {split_name!r} has class folders {unknown} absent from train")
        items, labels = [], []
        for label, cls in enumerate(classes):
            for name, data in sorted(by_class.get(cls, [])):
                items.append((name, data))
                labels.append(label)
        progress = progress_factory(f"decoding {split_name}", len(items)) if progress_factory else None
        images = decode_many(items, size=size, progress=progress)
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            first = images[0].shape
            odd = next(name for (name, _), im in zip(items, images) if im.shape != first)
            raise SourceError(
                f"{source}: images differ in size ({first} vs {odd!r}); pass a size to resize them"
            )
        splits[split_name] = Split(np.stack(images), np.asarray(labels, dtype=np.int64))
    return splits, classes
