"""The dataset directory every format shares (meta.json, per-split labels) and the "tensor" format: raw
uint8 arrays that a training run can put on the GPU whole.

Layout of a tensor dataset directory::

    meta.json            identity and statistics: writer, format, name, classes, counts, shapes, dtypes,
                         label ranges, train mean/std, size and sha256 of every file, source, options
    train_images.npy     uint8 (N, H, W, C), memory-mappable
    train_labels.npy     int64 (N,)
    test_images.npy ...  one pair per split

A dataset is written into a temporary sibling directory (`fileio.atomic_directory`), every file fsynced,
and renamed into place only when complete, so a crash or `kill -9` never leaves something that looks
like a finished dataset. `verify.check_dataset` checks a directory against its meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..choices import did_you_mean
from ..fileio import UnreadableJson, atomic_directory, read_json_object
from .archive import is_archive
from .errors import DatasetError

FORMAT_VERSION = 1
META_FILE = "meta.json"
_SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")  # what a source folder holds
WRITER = "fasttrain"  # meta.json's "writer": this directory is fasttrain's to replace (with --force)


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path, array: np.ndarray | None = None) -> dict:
    """meta.json's record of one written file: size and sha256, plus shape and dtype for an array."""
    rec: dict = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if array is not None:
        rec.update(shape=list(array.shape), dtype=str(array.dtype))
    return rec


def save_labels(directory: Path, split: str, labels: np.ndarray) -> dict:
    """Write `<split>_labels.npy` (int64) and return its file record (every format keeps these)."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    path = directory / f"{split}_labels.npy"
    np.save(path, labels)
    return {path.name: file_record(path, labels)}


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, as fractions of 255, computed in float64 chunks."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, c).astype(np.float64) / 255.0
        total += block.sum(0)
        total_sq += (block * block).sum(0)
        count += block.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean * mean, 0.0))
    return mean.round(6).tolist(), std.round(6).tolist()


def check_splits(splits: dict[str, Split], classes: list[str]) -> None:
    """What every writer needs: a train split, uint8 NHWC images of one size, integer labels in [0, classes)."""
    if "train" not in splits:
        raise DatasetError("a dataset needs a 'train' split (its statistics normalise every split)")
    if len(classes) < 2:
        raise DatasetError(f"found {len(classes)} class ({', '.join(classes)}): a classifier needs at least 2 "
                           "classes (one folder per class)")
    for name, split in splits.items():
        if split.images.dtype != np.uint8 or split.images.ndim != 4:
            raise DatasetError(f"split {name!r}: images must be uint8 (N, H, W, C), got {split.images.dtype} "
                               f"{split.images.shape}")
        labels = np.asarray(split.labels)
        if labels.shape != (split.images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"split {name!r}: {split.images.shape[0]} images need as many integer labels, got "
                               f"{labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"split {name!r}: labels must lie in [0, {len(classes)}), got "
                               f"[{labels.min()}, {labels.max()}]")
        if split.images.shape[1:] != splits["train"].images.shape[1:]:
            raise DatasetError(f"split {name!r} has {split.images.shape[1:]} images, 'train' has "
                               f"{splits['train'].images.shape[1:]}: every split must share one image size "
                               "(--size S resizes them, for the datasets that take it)")


def split_record(split: Split, num_classes: int, shape: tuple[int, ...] | list[int]) -> dict:
    """meta.json's per-split entry before the file records: count, image shape, class counts, label range."""
    labels = np.asarray(split.labels, dtype=np.int64)
    return {"count": int(len(labels)), "shape": list(shape),
            "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
            "label_range": [int(labels.min()), int(labels.max())] if labels.size else None}


def base_meta(fmt: str, splits: dict[str, Split], classes: list[str], name: str, source: str,
              extra_meta: dict | None) -> dict:
    mean, std = channel_stats(splits["train"].images)
    meta = {
        "writer": WRITER,
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "name": name,
        "classes": list(classes),
        "num_classes": len(classes),
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mean": mean,  # of the source pixels (before any JPEG re-encoding or resizing)
        "std": std,
        "shape": list(splits["train"].images.shape[1:]),
        "splits": {},
    }
    meta.update(extra_meta or {})
    return meta


def write_meta(directory: Path, meta: dict) -> None:
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))  # fsynced with the directory


def write_tensor_dataset(
    out_dir: str | Path,
    splits: dict[str, Split],
    classes: list[str],
    *,
    name: str,
    source: str,
    extra_meta: dict | None = None,
) -> Path:
    """Write `splits` as a tensor-format dataset at `out_dir`, atomically (temp dir, fsync, then rename).
    Whether `out_dir` may be replaced is the caller's decision (`outdir.plan_output`)."""
    out_dir = Path(out_dir)
    check_splits(splits, classes)
    meta = base_meta("tensor", splits, classes, name, source, extra_meta)
    with atomic_directory(out_dir) as tmp:
        for split_name, split in splits.items():
            images = np.ascontiguousarray(split.images, dtype=np.uint8)
            path = tmp / f"{split_name}_images.npy"
            np.save(path, images)
            info = split_record(split, len(classes), images.shape[1:])
            info["files"] = {path.name: file_record(path, images), **save_labels(tmp, split_name, split.labels)}
            meta["splits"][split_name] = info
        write_meta(tmp, meta)
    return out_dir


def not_a_dataset(path: Path) -> str:
    """Why `path` is not a converted dataset, and the command that makes one from it."""
    convert = (f"`fasttrain convert cifar10 --source {path}` (CIFAR) or `fasttrain convert imagefolder --source "
               f"{path} --name NAME`, then pass the printed directory as --data")
    if not path.exists():  # a typo among its siblings, else the command that makes one there
        parent = path.parent if path.parent.is_dir() else None
        siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent else []
        hint = did_you_mean(path.name, siblings, show=lambda c: f"{parent}/{c}" if str(parent) != "." else c)
        return (f"{path}: no such directory{hint + ' Or c' if hint else '; c'}onvert a dataset there first, e.g. "
                f"`fasttrain convert cifar10 --source PATH --out {path}` (`fasttrain convert --help` lists the "
                f"datasets)")
    if path.is_file():
        kind = "an archive" if is_archive(path) else "a file"
        return f"{path} is {kind}, not a converted dataset directory: convert it first with {convert}"
    try:
        entries = list(os.scandir(path))
    except OSError:
        entries = []
    if any(e.is_dir() or e.name.lower().endswith(_SOURCE_SUFFIXES) or is_archive(e.name) for e in entries):
        return (f"{path} has no {META_FILE}: it looks like a source (folders, images or archives), not a "
                f"converted dataset: convert it first with {convert}")
    return f"{path} has no {META_FILE}: not a converted dataset; convert one with {convert}"


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DatasetError(not_a_dataset(Path(data_dir)))
    try:
        return read_json_object(path)
    except UnreadableJson as e:
        raise DatasetError(f"{e}; re-run the conversion with --force") from None


def load_split(data_dir: str | Path, split: str) -> Split:
    """Memory-map one split (`verify.check_dataset` checks the files against meta.json)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if split not in meta.get("splits", {}):
        raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta.get('splits', {}))}")
    images = np.load(data_dir / f"{split}_images.npy", mmap_mode="r")
    labels = np.load(data_dir / f"{split}_labels.npy", mmap_mode="r")
    return Split(images=images, labels=labels)
