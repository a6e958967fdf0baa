"""The official CIFAR archives, read into uint8 NHWC arrays per split (image-folder sources of CIFAR
are read by `imagefolder.read_image_tree`):

- the python-version tarball (pickles, read with a restricted unpickler that admits only the numpy
  array constructors and plain data: a pickle that would call anything else is refused);
- the binary tarball (fixed-size records).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from .archive import ARCHIVE_ERRORS, truncated_archive
from .errors import SourceError
from .tensor_format import Split


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
def open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except ARCHIVE_ERRORS as e:
        raise SourceError(f"{path}: not a readable tar archive ({e})") from e


def _tar_members_by_basename(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    try:
        return {PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()}
    except ARCHIVE_ERRORS as e:
        raise truncated_archive(Path(tar.name or "archive"), e) from e


def _read_member(tar: tarfile.TarFile, members: dict, name: str, archive: Path) -> bytes:
    if name not in members:
        raise SourceError(f"{archive}: expected a member named {name!r}; is this the right archive?")
    try:
        f = tar.extractfile(members[name])
        assert f is not None
        return f.read()
    except ARCHIVE_ERRORS as e:
        raise truncated_archive(archive, e) from e


def _rows_to_nhwc(rows: np.ndarray, source: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3072:
        raise SourceError(f"{source}: expected image rows of 3072 bytes (3x32x32), got shape {rows.shape}")
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_cifar_python(path: Path, dataset: str) -> tuple[dict[str, Split], list[str]]:
    """Official `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`."""
    with open_tar(path) as tar:
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
    with open_tar(path) as tar:
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
