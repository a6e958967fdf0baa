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

from .archive import ARCHIVE_ERRORS, MAX_FILE_BYTES, read_capped, too_big, truncated_archive
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


class _RefusedCall(ValueError):
    """A call inside a pickle that is not plain data (named with its file by `safe_unpickle`)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise _RefusedCall(f"refusing _codecs.encode with encoding {encoding!r} (only latin1 is plain data)")
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
    except _RefusedCall as e:
        raise SourceError(f"{source_name}: {e}: a CIFAR batch holds only plain data and numpy arrays (this file may "
                          "be malicious or not a CIFAR batch); download the official archive again") from None
    except Exception as e:
        raise SourceError(f"{source_name}: not a readable pickle ({type(e).__name__}: {e})") from e


def _key(d: dict, name: str):
    """Pickles from Python 2 have bytes keys; accept str keys too."""
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise SourceError(f"expected key {name!r} in CIFAR batch, found {sorted(map(str, d))}")


def _decode_names(names: Iterable, source: str) -> list[str]:
    """Class names as text: UTF-8, else Latin-1 (every byte is a Latin-1 character, so an old archive's
    accented names still read); anything but text is named."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise SourceError(f"{source}: expected a list of class names, got {type(names).__name__}")
    decoded = []
    for n in names:
        if not isinstance(n, (str, bytes, np.str_, np.bytes_)):
            raise SourceError(f"{source}: class names must be text, got {type(n).__name__} {n!r}")
        decoded.append(decode_text(n) if isinstance(n, bytes) else str(n))
    return decoded


def decode_text(data: bytes) -> str:
    """UTF-8, else Latin-1 (which decodes any bytes): names in old archives are often Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _pixel_rows(rows, source: str) -> np.ndarray:
    """The batch's pixel rows as uint8, refused rather than cast when they are not whole numbers 0..255:
    float pixels (e.g. 0..1) would truncate to 0/1, so no scale is guessed."""
    rows = np.asarray(rows)
    if rows.dtype == np.uint8:
        return rows
    if rows.dtype.kind == "f":
        low, high = (float(rows.min()), float(rows.max())) if rows.size else (0.0, 0.0)
        raise SourceError(f"{source}: pixel data are {rows.dtype} (values {low:g}..{high:g}), expected uint8 "
                          f"0..255 as in the official archive; fasttrain does not guess the scale: convert "
                          f"the batch to uint8 (e.g. (x * 255).round() for values in 0..1) and pickle it again")
    if rows.dtype.kind not in "iu":
        raise SourceError(f"{source}: pixel data are {rows.dtype}, expected uint8 0..255 as in the official archive")
    if rows.size and (rows.min() < 0 or rows.max() > 255):
        raise SourceError(f"{source}: pixel values {rows.min()}..{rows.max()} are outside 0..255")
    return rows.astype(np.uint8)


_DAMAGED = "the archive is damaged or not the official one: download it again"


def _labels(values, count: int, num_classes: int, source: str) -> np.ndarray:
    """Integer class indices in 0..num_classes-1, one per image; text labels (b'cat') and floats named."""
    labels = np.asarray(values) if not isinstance(values, (str, bytes)) else np.asarray([values])
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        shown = labels.ravel()[0] if labels.size else labels.dtype
        raise SourceError(f"{source}: labels must be a list of integer class indices, got {labels.dtype} "
                          f"(e.g. {shown!r}); {_DAMAGED}")
    if len(labels) != count:
        raise SourceError(f"{source}: {len(labels)} labels for {count} images; {_DAMAGED}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise SourceError(f"{source}: label {bad[0]} is outside 0..{num_classes - 1} ({num_classes} classes); "
                          f"{_DAMAGED}")
    return labels.astype(np.int64)


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
    member = members[name]
    if member.size > MAX_FILE_BYTES:
        raise SourceError(f"{archive}:{member.name}: {too_big(MAX_FILE_BYTES)}; is this the right archive?")
    try:
        f = tar.extractfile(member)
        assert f is not None
        return read_capped(f, MAX_FILE_BYTES, f"{archive}:{member.name}")
    except ARCHIVE_ERRORS as e:
        raise truncated_archive(archive, e) from e


def _rows_to_nhwc(rows: np.ndarray, source: str) -> np.ndarray:
    rows = _pixel_rows(rows, source)
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
            classes = _decode_names(_key(load("batches.meta"), "label_names"), f"{path}:batches.meta")
            train_names, test_name, label_key = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"
        else:
            classes = _decode_names(_key(load("meta"), "fine_label_names"), f"{path}:meta")
            train_names, test_name, label_key = ["train"], "test", "fine_labels"

        def to_split(names: list[str]) -> Split:
            images, labels = [], []
            for name in names:  # each batch checked before it is cast, named by archive and member
                batch = load(name)
                images.append(_rows_to_nhwc(_key(batch, "data"), f"{path}:{name}"))
                labels.append(_labels(_key(batch, label_key), len(images[-1]), len(classes), f"{path}:{name}"))
            return Split(np.concatenate(images), np.concatenate(labels))

        return {"train": to_split(train_names), "test": to_split([test_name])}, classes


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
            line.strip() for line in decode_text(_read_member(tar, members, names_file, path)).splitlines()
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
                labels.append(_labels(raw[:, label_index], len(raw), len(classes), f"{path}:{name}"))
                images.append(_rows_to_nhwc(raw[:, label_bytes:], f"{path}:{name}"))
            return Split(np.concatenate(images), np.concatenate(labels))

        return {"train": to_split(train_files), "test": to_split(test_files)}, classes
