"""Is a converted dataset what its meta.json says it is? Cheap structural checks on every load, a full
sha256 check on demand, and the identity a run records so that a resume can refuse a different dataset.

Agreed interface (used by the trainers, `eval` and `fasttrain verify`):
    check_dataset(data_dir, *, full=False) -> meta     raises DatasetError naming the file and the fix
    dataset_identity(meta) -> dict                     what must match between a run's start and its resume

The cheap check reads meta.json, the .npy headers (shape, dtype, and the file size they imply, so a
truncated array is caught) and the labels (small); no image is read. `full=True` adds the sha256 of
every file meta.json records.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .jpeg_store import check_shards, load_index
from .tensor_format import META_FILE, WRITER, read_meta, sha256_file

FORMATS = ("tensor", "ffcv", "dali", "jpeg")
REQUIRED_SPLITS = ("train", "test")


# ----------------------------------------------------------------------------- what a directory is
def is_fasttrain_meta(meta: dict) -> bool:
    """meta.json written by fasttrain: it says so, or it has the layout of one written before it did."""
    if meta.get("writer") == WRITER:
        return True
    return (meta.get("format", "tensor") in FORMATS and "format_version" in meta and "created" in meta
            and "classes" in meta and isinstance(meta.get("splits"), dict))


def written_entries(meta: dict) -> set[str]:
    """The names fasttrain writes at the top of a dataset directory of this meta."""
    fmt = meta.get("format", "tensor")
    names = {META_FILE}
    for split, info in (meta.get("splits") or {}).items():
        info = info if isinstance(info, dict) else {}
        names |= set(info.get("files") or {})
        names.add(f"{split}_labels.npy")
        if fmt == "tensor":
            names.add(f"{split}_images.npy")
        elif fmt == "ffcv":
            names.add(info.get("file") or f"{split}.beton")
        elif fmt == "jpeg":
            names |= {f"{split}_index.npy", *(info.get("shards") or [])}
        else:
            names |= {info.get("list") or f"{split}_list.txt", split}
    return names


# ----------------------------------------------------------------------------- the checks
def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte size the header implies) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        offset = f.tell()
    return tuple(shape), dtype, offset + math.prod(shape) * dtype.itemsize


class _Checker:
    def __init__(self, data_dir: Path, meta: dict):
        self.dir = data_dir
        self.meta = meta
        self.fix = (f"re-convert it: `fasttrain convert {meta.get('name', 'DATASET')} --source SOURCE --out "
                    f"{data_dir} --force`")

    def fail(self, what: str) -> DatasetError:
        return DatasetError(f"{what}; {self.fix}")

    def npy(self, name: str, *, kinds: str, ndim: int, count: int) -> tuple[tuple[int, ...], np.dtype]:
        path = self.dir / name
        if not path.is_file():
            raise self.fail(f"{path} is missing")
        try:
            shape, dtype, size = _npy_header(path)
        except (OSError, ValueError) as e:
            raise self.fail(f"{path}: not a readable .npy array ({e})") from e
        if dtype.kind not in kinds:
            want = {"u": "uint8 images", "V": "index rows"}.get(kinds, "integer labels")
            raise self.fail(f"{path}: holds {dtype} values, expected {want}"
                            + (" (float labels are refused, not truncated)" if dtype.kind == "f" else ""))
        if len(shape) != ndim or shape[0] != count:
            raise self.fail(f"{path}: shape {shape}, expected {ndim} dimensions with {count} rows (meta.json's count)")
        actual = path.stat().st_size
        if actual != size:
            raise self.fail(f"{path}: {actual} bytes, but its header announces {size} (truncated or damaged)")
        return shape, dtype

    def labels(self, split: str, count: int) -> None:
        self.npy(f"{split}_labels.npy", kinds="iu", ndim=1, count=count)
        labels = np.load(self.dir / f"{split}_labels.npy", allow_pickle=False)
        n = self.meta["num_classes"]
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise self.fail(f"{self.dir / f'{split}_labels.npy'}: labels span [{labels.min()}, {labels.max()}], "
                            f"outside [0, {n}) for num_classes {n}")

    def sized_file(self, name: str, record: dict | None) -> None:
        path = self.dir / name
        if not path.is_file():
            raise self.fail(f"{path} is missing")
        if record and "bytes" in record and path.stat().st_size != record["bytes"]:
            raise self.fail(f"{path}: {path.stat().st_size} bytes, meta.json recorded {record['bytes']} "
                            "(truncated or replaced)")

    def split(self, split: str, info: dict, full: bool) -> None:
        if not isinstance(info, dict) or not isinstance(info.get("count"), int) or info["count"] < 0:
            raise self.fail(f"{self.dir / META_FILE}: split {split!r} has no valid 'count'")
        count, fmt = info["count"], self.meta.get("format", "tensor")
        shape = info.get("shape", self.meta.get("shape"))
        records = info.get("files") or {}
        if fmt == "tensor":
            img_shape, _ = self.npy(f"{split}_images.npy", kinds="u", ndim=4, count=count)
            if list(img_shape[1:]) != list(shape) or list(shape) != list(self.meta["shape"]):
                raise self.fail(f"{self.dir / f'{split}_images.npy'}: images are {list(img_shape[1:])}, meta.json "
                                f"says {list(self.meta['shape'])}")
        elif fmt == "ffcv":
            self.sized_file(info.get("file") or f"{split}.beton",
                            records.get(info.get("file")) or {k: info[k] for k in ("bytes",) if k in info})
        elif fmt == "jpeg":
            shards = info.get("shards")
            if not isinstance(shards, list) or not shards:
                raise self.fail(f"{self.dir / META_FILE}: split {split!r} lists no 'shards'")
            for name in shards:
                self.sized_file(name, records.get(name))
            self.npy(f"{split}_index.npy", kinds="V", ndim=1, count=count)
            self.labels(split, count)
            index = load_index(self.dir, split, len(shards))
            if not np.array_equal(index["label"], np.load(self.dir / f"{split}_labels.npy", allow_pickle=False)):
                raise self.fail(f"{self.dir / f'{split}_labels.npy'}: labels differ from {split}_index.npy's")
        else:
            name = info.get("list") or f"{split}_list.txt"
            self.sized_file(name, records.get(name))
            with open(self.dir / name) as f:
                lines = sum(1 for _ in f)
            if lines != count:
                raise self.fail(f"{self.dir / name}: {lines} lines, meta.json's count is {count}")
        self.labels(split, count)
        for name, rec in records.items():
            if "bytes" in rec and (self.dir / name).is_file() and (self.dir / name).stat().st_size != rec["bytes"]:
                raise self.fail(f"{self.dir / name}: {(self.dir / name).stat().st_size} bytes, meta.json recorded "
                                f"{rec['bytes']} (truncated or replaced)")
        if full:
            self.checksums(split, info)
            if fmt == "jpeg":  # the checksums cover the files; is every index row a JPEG member of its shard?
                check_shards(self.dir, split, info["shards"], load_index(self.dir, split, len(info["shards"])))
            if fmt == "dali":  # the list's checksum covers the names; each JPEG must still be there
                with open(self.dir / (info.get("list") or f"{split}_list.txt")) as f:
                    missing = [rel for rel, _, _ in (line.rpartition(" ") for line in f)
                               if not (self.dir / rel).is_file()]
                if missing:
                    raise self.fail(f"{self.dir / missing[0]} is missing ({len(missing)} listed JPEGs are)")

    def checksums(self, split: str, info: dict) -> None:
        records = info.get("files")
        if records:
            for name, rec in records.items():
                if sha256_file(self.dir / name) != rec.get("sha256"):
                    raise self.fail(f"{self.dir / name}: sha256 differs from meta.json's (the file was changed)")
            return
        # written before meta.json recorded files: tensor arrays carry the sha256 of their array data
        legacy = {f"{split}_images.npy": info.get("images_sha256"), f"{split}_labels.npy": info.get("labels_sha256")}
        if not all(legacy.values()):
            raise self.fail(f"{self.dir / META_FILE}: split {split!r} records no checksums to verify")
        for name, want in legacy.items():
            arr = np.load(self.dir / name, mmap_mode="r")
            h = hashlib.sha256()
            flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            for start in range(0, flat.size, 1 << 24):
                h.update(flat[start : start + (1 << 24)].data)
            if h.hexdigest() != want:
                raise self.fail(f"{self.dir / name}: sha256 differs from meta.json's (the file was changed)")

    def top(self, required_splits: tuple[str, ...]) -> None:
        meta, where = self.meta, self.dir / META_FILE
        if meta.get("format", "tensor") not in FORMATS:
            raise self.fail(f"{where}: unknown format {meta.get('format')!r} (known: {', '.join(FORMATS)})")
        splits = meta.get("splits")
        if not isinstance(splits, dict) or not splits:
            raise self.fail(f"{where}: no 'splits' recorded")
        missing = [s for s in required_splits if s not in splits]
        if missing:
            raise self.fail(f"{where}: no {' or '.join(repr(s) for s in missing)} split (it has {sorted(splits)}); "
                            "a run trains on 'train' and evaluates on 'test'")
        n, classes = meta.get("num_classes"), meta.get("classes")
        if not isinstance(n, int) or not isinstance(classes, list) or n != len(classes):
            raise self.fail(f"{where}: num_classes {n!r} does not match its {len(classes or [])} class names")
        if n < 2:
            raise self.fail(f"{where}: {n} class: a classifier needs at least 2 classes")
        shape = meta.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise self.fail(f"{where}: 'shape' must be [height, width, channels], got {shape!r}")
        for key in ("mean", "std"):
            vals = meta.get(key)
            if not (isinstance(vals, list) and len(vals) == shape[2]
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals)):
                raise self.fail(f"{where}: {key!r} must be {shape[2]} finite numbers (one per channel), got {vals!r}")
        if min(meta["std"]) <= 0:
            raise self.fail(f"{where}: std {meta['std']} has a channel <= 0: normalising would divide by zero "
                            "(every train image has the same value in that channel)")


def check_dataset(data_dir: str | Path, *, full: bool = False,
                  required_splits: tuple[str, ...] = REQUIRED_SPLITS) -> dict:
    """The dataset's meta.json after checking the files against it (structure always; sha256 when `full`).
    Raises DatasetError naming the file, what was expected and the fix."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    checker = _Checker(data_dir, meta)
    checker.top(required_splits)
    for split, info in meta["splits"].items():
        checker.split(split, info, full)
    return meta


def is_complete(data_dir: str | Path, fmt: str | None = None) -> bool:
    """True if `data_dir` holds a dataset (of format `fmt`, when given) whose files all exist with the
    shapes and sizes meta.json records (the cheap check; no checksums)."""
    try:
        meta = check_dataset(data_dir, required_splits=("train",))
    except (DatasetError, OSError, ValueError, KeyError, TypeError):
        return False
    return fmt is None or meta.get("format", "tensor") == fmt


def dataset_identity(meta: dict) -> dict:
    """The fields that identify a dataset: a resume on a dataset whose identity differs is refused."""
    splits = {}
    for split, info in (meta.get("splits") or {}).items():
        sums = {name: rec.get("sha256") for name, rec in (info.get("files") or {}).items()}
        if not sums:  # written before meta.json recorded files
            sums = {k: info[k] for k in ("images_sha256", "labels_sha256", "sha256", "list_sha256") if k in info}
        splits[split] = {"count": info.get("count"), "sha256": sums}
    return {"name": meta.get("name"), "format": meta.get("format", "tensor"), "num_classes": meta.get("num_classes"),
            "classes": meta.get("classes"), "shape": meta.get("shape"), "splits": splits}
