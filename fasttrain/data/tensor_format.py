"""The "tensor" dataset format: raw uint8 arrays that a training run can put on the GPU whole.

Layout of a dataset directory::

    meta.json            classes, counts, shape, train mean/std, sha256 of every array, source, version
    train_images.npy     uint8 (N, H, W, C), memory-mappable
    train_labels.npy     int64 (N,)
    test_images.npy ...  one pair per split

A dataset is written into a temporary sibling directory and renamed into place only when every file is
complete, so a crash or Ctrl-C never leaves something that looks like a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META_FILE = "meta.json"


class DatasetError(RuntimeError):
    """A dataset directory is missing, incomplete or inconsistent."""


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)


def sha256_of_array(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, flat.size, step):
        h.update(flat[start : start + step].data)
    return h.hexdigest()


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


def _check_split(name: str, split: Split, num_classes: int) -> None:
    if split.images.dtype != np.uint8 or split.images.ndim != 4:
        raise DatasetError(
            f"split {name!r}: images must be uint8 (N, H, W, C), got {split.images.dtype} {split.images.shape}"
        )
    if split.labels.shape != (split.images.shape[0],):
        raise DatasetError(
            f"split {name!r}: {split.images.shape[0]} images but labels have shape {split.labels.shape}"
        )
    if split.labels.size and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        raise DatasetError(f"split {name!r}: labels must lie in [0, {num_classes}), got "
                           f"[{split.labels.min()}, {split.labels.max()}]")


def write_tensor_dataset(
    out_dir: str | Path,
    splits: dict[str, Split],
    classes: list[str],
    *,
    name: str,
    source: str,
    extra_meta: dict | None = None,
) -> Path:
    """Write `splits` as a tensor-format dataset at `out_dir`, atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    if "train" not in splits:
        raise DatasetError("a dataset needs a 'train' split (its statistics normalise every split)")
    for split_name, split in splits.items():
        _check_split(split_name, split, len(classes))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta: dict = {
            "format": "tensor",
            "format_version": FORMAT_VERSION,
            "name": name,
            "classes": list(classes),
            "num_classes": len(classes),
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "splits": {},
        }
        for split_name, split in splits.items():
            images = np.ascontiguousarray(split.images, dtype=np.uint8)
            labels = np.ascontiguousarray(split.labels, dtype=np.int64)
            np.save(tmp / f"{split_name}_images.npy", images)
            np.save(tmp / f"{split_name}_labels.npy", labels)
            meta["splits"][split_name] = {
                "count": int(len(labels)),
                "shape": list(images.shape[1:]),
                "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
                "images_sha256": sha256_of_array(images),
                "labels_sha256": sha256_of_array(labels),
            }
        mean, std = channel_stats(splits["train"].images)
        meta["mean"], meta["std"] = mean, std
        meta["shape"] = list(splits["train"].images.shape[1:])
        if extra_meta:
            meta.update(extra_meta)
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is swapped out first and deleted after."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{path} not found: convert the dataset first (`fasttrain convert ...`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); re-run the conversion with --force") from e


def is_complete(data_dir: str | Path) -> bool:
    """True if `data_dir` holds a tensor dataset whose files all exist with the recorded sizes."""
    try:
        meta = read_meta(data_dir)
    except DatasetError:
        return False
    if meta.get("format") != "tensor" or meta.get("format_version") != FORMAT_VERSION:
        return False
    for split_name, info in meta.get("splits", {}).items():
        for kind in ("images", "labels"):
            if not (Path(data_dir) / f"{split_name}_{kind}.npy").is_file():
                return False
        labels = np.load(Path(data_dir) / f"{split_name}_labels.npy", mmap_mode="r")
        if len(labels) != info["count"]:
            return False
    return True


def load_split(data_dir: str | Path, split: str, *, verify: bool = False) -> Split:
    """Memory-map one split. With `verify`, recompute and compare the sha256 of both arrays."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
    images = np.load(data_dir / f"{split}_images.npy", mmap_mode="r")
    labels = np.load(data_dir / f"{split}_labels.npy", mmap_mode="r")
    if verify:
        info = meta["splits"][split]
        for arr, key in ((images, "images_sha256"), (labels, "labels_sha256")):
            if sha256_of_array(arr) != info[key]:
                raise DatasetError(f"{data_dir}/{split}: checksum mismatch for {key}; re-convert with --force")
    return Split(images=images, labels=labels)
