"""The FFCV and DALI dataset formats: writers, and the readers' side (labels, file lists).

Layouts (one directory per dataset, `meta.json` as for the tensor format, plus `<split>_labels.npy` so
subsets and label checks never need to decode an image):

    ffcv   <split>.beton        FFCV file: field "image" (RGBImageField, raw or JPEG) + "label" (IntField)
    dali   <split>/<class>/<index>.jpg and <split>_list.txt ("<relative path> <label>" per line, dataset
           order): what DALI's file reader takes and its nvJPEG decoder ("mixed") reads on the GPU.

Why JPEG files + a list for DALI and not DALI's indexed containers (webdataset/TFRecord): measured in
benchmarks/pipeline_throughput.py (`--dali-layouts`), see the README table.

Every writer runs in a forked child process (its own process group) under a timeout, writing into a
temporary sibling directory (`fileio.atomic_directory`); only the parent renames it into place, and only
after the child reported success. A hung FFCV `DatasetWriter` (a known failure mode) or Ctrl-C is killed
with its workers and leaves nothing that looks complete; if the parent itself is killed, the child sees
it and kills its own process group.
"""

from __future__ import annotations

import importlib
import io
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_directory
from .errors import DatasetError
from .tensor_format import Split, base_meta, read_meta, check_splits, file_record, save_labels, split_record, write_meta

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_DALI_JPEG_QUALITY = 95
INSTALL_HINTS = {"ffcv": "pip install 'fasttrain[ffcv]'", "dali": "pip install 'fasttrain[dali]'"}


class WriterTimeout(DatasetError):
    """A format writer did not finish within its time limit (nothing was written)."""


class MissingBackend(DatasetError):
    """An optional package (ffcv, DALI) is not installed; the message names the extra that installs it."""


def import_optional(module: str, extra: str):
    """Import an optional backend, or fail with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingBackend(
            f"{module} is not installed (needed by the {extra} format/pipeline): {INSTALL_HINTS[extra]} "
            f"({type(e).__name__}: {e})"
        ) from e


# ----------------------------------------------------------------------------- shared helpers
def limited_shape(h: int, w: int, max_resolution: int | None) -> tuple[int, int]:
    """(h, w) after shrinking the longer side to `max_resolution`, with FFCV's own rounding (truncation)."""
    if max_resolution is None or max(h, w) <= max_resolution:
        return h, w
    ratio = max_resolution / max(h, w)
    return int(ratio * h), int(ratio * w)


def _check_rgb(fmt: str, splits: dict[str, Split], classes: list[str]) -> None:
    check_splits(splits, classes)
    for split_name, split in splits.items():
        if split.images.shape[-1] != 3:
            raise DatasetError(f"--format {fmt}: split {split_name!r} has {split.images.shape[-1]} channels; "
                               "the ffcv and dali formats store RGB images (3 channels): use --format tensor")


def _kill_group_when_orphaned(parent_pid: int) -> None:
    """In the writer child: kill this whole process group (the writer's own workers too) if the parent dies."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def run_with_timeout(fn: Callable[[], dict], timeout_s: float, what: str,
                     progress: Callable[[int], None] | None = None, counter=None) -> dict:
    """Run `fn` in a forked child in its own process group; kill the whole group after `timeout_s`.

    `fn` returns a small JSON-able dict (sent back through a pipe). `counter` is an optional shared
    multiprocessing.Value the child increments, forwarded to `progress` while we wait.
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    parent_pid = os.getpid()

    def child() -> None:
        os.setsid()  # own process group: killing it also kills the writer's worker processes
        _kill_group_when_orphaned(parent_pid)
        try:
            send.send(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            send.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        finally:
            send.close()

    proc = ctx.Process(target=child, name=f"fasttrain-writer-{what}")
    proc.start()
    send.close()
    deadline = time.monotonic() + timeout_s
    reported = 0
    try:
        while True:
            if recv.poll(0.2):
                try:
                    status, payload = recv.recv()
                except EOFError:
                    status, payload = "error", "the writer process exited without a result"
                break
            if counter is not None and progress is not None and counter.value > reported:
                progress(counter.value - reported)
                reported = counter.value
            if not proc.is_alive():
                status, payload = "error", f"the writer process died (exit code {proc.exitcode})"
                break
            if time.monotonic() > deadline:
                raise WriterTimeout(f"{what}: the writer did not finish within {timeout_s:.0f} s and was killed; "
                                    "nothing was written (raise --timeout for large datasets)")
    finally:
        _kill_group(proc)
        recv.close()
    if counter is not None and progress is not None and counter.value > reported:
        progress(counter.value - reported)
    if status != "ok":
        raise DatasetError(f"{what}: writer failed: {payload}")
    return payload


def _kill_group(proc) -> None:
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.join(5)
    # Workers of a finished writer may linger in the group (FFCV leaves none, but be sure).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write_atomically(out_dir: Path, fmt: str, write_into: Callable[[Path], dict], meta: dict, timeout_s: float,
                      progress: Callable[[int], None] | None = None, counter=None) -> Path:
    """`write_into(tmp)` fills a temp dir (in a child, under the timeout) and returns per-split meta."""
    with atomic_directory(out_dir) as tmp:
        meta["splits"] = run_with_timeout(lambda: write_into(tmp), timeout_s, f"--format {fmt} -> {out_dir}",
                                          progress, counter)
        if "train" in meta["splits"]:
            meta["shape"] = meta["splits"]["train"]["shape"]
        write_meta(tmp, meta)
    return out_dir


# ----------------------------------------------------------------------------- ffcv
class _ArrayDataset:
    """What FFCV's DatasetWriter indexes: (HWC uint8 image, int label) tuples."""

    def __init__(self, split: Split):
        self.images, self.labels = split.images, split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


def write_ffcv_dataset(
    out_dir: str | Path,
    splits: dict[str, Split],
    classes: list[str],
    *,
    name: str,
    source: str,
    jpeg_quality: int | None = None,
    max_resolution: int | None = None,
    num_workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    extra_meta: dict | None = None,
) -> Path:
    """One `.beton` per split: raw pixels, or JPEG at `jpeg_quality` when given; atomic, under a timeout."""
    import_optional("ffcv", "ffcv")
    _check_rgb("ffcv", splits, classes)
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise DatasetError(f"--jpeg-quality must lie in [1, 100], got {jpeg_quality}")
    write_mode = "jpg" if jpeg_quality is not None else "raw"
    workers = num_workers or min(8, os.cpu_count() or 1)

    def write_into(tmp: Path) -> dict:
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

        info = {}
        for split_name, split in splits.items():
            field = RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                  jpeg_quality=jpeg_quality or 90)
            path = tmp / f"{split_name}.beton"
            writer = DatasetWriter(str(path), {"image": field, "label": IntField()}, num_workers=workers)
            writer.from_indexed_dataset(_ArrayDataset(split), chunksize=256)
            h, w = limited_shape(*split.images.shape[1:3], max_resolution)
            info[split_name] = {**split_record(split, len(classes), (h, w, 3)), "file": path.name,
                                "files": {path.name: file_record(path), **save_labels(tmp, split_name, split.labels)}}
        return info

    meta = base_meta("ffcv", splits, classes, name, source, extra_meta)
    meta["ffcv"] = {"write_mode": write_mode, "jpeg_quality": jpeg_quality, "max_resolution": max_resolution}
    return _write_atomically(Path(out_dir), "ffcv", write_into, meta, timeout_s)


# ----------------------------------------------------------------------------- dali (JPEG files + list)
def encode_jpeg(image: np.ndarray, quality: int, max_resolution: int | None = None) -> bytes:
    """uint8 HWC RGB -> JPEG bytes (PIL, 4:2:0 as libjpeg's default), optionally shrunk first."""
    img = Image.fromarray(np.ascontiguousarray(image))
    h, w = limited_shape(image.shape[0], image.shape[1], max_resolution)
    if (h, w) != image.shape[:2]:
        img = img.resize((w, h), Image.BOX)  # area averaging, like FFCV's cv2.INTER_AREA
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _class_dirs(classes: list[str]) -> list[str]:
    """Folder name per class: the class names when all are plain path components (no spaces, which DALI's
    file lists cannot hold, no slashes: e.g. Cars196's "Ram C/V Cargo Van"), else the class indices."""
    safe = all(re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", c) for c in classes)
    return list(classes) if safe and len(set(classes)) == len(classes) else [f"{i:05d}" for i in range(len(classes))]


def write_dali_dataset(
    out_dir: str | Path,
    splits: dict[str, Split],
    classes: list[str],
    *,
    name: str,
    source: str,
    jpeg_quality: int | None = None,
    max_resolution: int | None = None,
    num_workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    extra_meta: dict | None = None,
) -> Path:
    """JPEG files under `<split>/<class>/` plus `<split>_list.txt`; atomic, under a timeout."""
    _check_rgb("dali", splits, classes)
    quality = jpeg_quality if jpeg_quality is not None else DEFAULT_DALI_JPEG_QUALITY
    if not 1 <= quality <= 100:
        raise DatasetError(f"--jpeg-quality must lie in [1, 100], got {quality}")
    dirs = _class_dirs(classes)
    workers = num_workers or min(8, os.cpu_count() or 1)
    counter = multiprocessing.get_context("fork").Value("q", 0)

    def write_into(tmp: Path) -> dict:
        info = {}
        for split_name, split in splits.items():
            labels = np.asarray(split.labels, dtype=np.int64)
            rel = [f"{split_name}/{dirs[lab]}/{i:07d}.jpg" for i, lab in enumerate(labels)]
            for d in sorted({r.rsplit("/", 1)[0] for r in rel}):
                (tmp / d).mkdir(parents=True, exist_ok=True)

            def write_one(i: int, rel: list[str] = rel, images: np.ndarray = split.images) -> None:
                (tmp / rel[i]).write_bytes(encode_jpeg(images[i], quality, max_resolution))
                with counter.get_lock():
                    counter.value += 1

            with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while encoding
                list(pool.map(write_one, range(len(labels)), chunksize=256))
            list_path = tmp / f"{split_name}_list.txt"
            list_path.write_text("".join(f"{r} {lab}\n" for r, lab in zip(rel, labels)))
            h, w = limited_shape(*split.images.shape[1:3], max_resolution)
            info[split_name] = {**split_record(split, len(classes), (h, w, 3)), "list": list_path.name,
                                "files": {list_path.name: file_record(list_path),
                                          **save_labels(tmp, split_name, labels)}}
        return info

    total = sum(len(s.labels) for s in splits.values())
    progress = progress_factory("encoding JPEGs", total) if progress_factory else None
    meta = base_meta("dali", splits, classes, name, source, extra_meta)
    meta["dali"] = {"layout": "jpeg-files+list", "jpeg_quality": quality, "max_resolution": max_resolution}
    return _write_atomically(Path(out_dir), "dali", write_into, meta, timeout_s, progress, counter)


# ----------------------------------------------------------------------------- reading side
def read_labels(data_dir: str | Path, split: str) -> np.ndarray:
    """int64 labels of a split in dataset order, for any format."""
    splits = read_meta(data_dir).get("splits") or {}
    if split not in splits:
        raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(splits)} (a validation split is "
                           "carved out of train by `run --val-split`, not stored in the dataset)")
    path = Path(data_dir) / f"{split}_labels.npy"
    try:
        return np.load(path).astype(np.int64, casting="safe")
    except (OSError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable integer label array ({e}); `fasttrain verify {data_dir}` "
                           "says more; re-convert with `fasttrain convert ... --force`") from e


def read_file_list(data_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(absolute JPEG paths, int64 labels) of a dali-format split, in dataset order."""
    data_dir = Path(data_dir).resolve()
    path = data_dir / f"{split}_list.txt"
    if not path.is_file():
        raise DatasetError(f"{path} not found: convert with `fasttrain convert DATASET --format dali`")
    files, labels = [], []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        rel, _, lab = line.rpartition(" ")
        if not rel or not lab.lstrip("-").isdigit():
            raise DatasetError(f"{path}:{line_no}: expected '<relative path> <label>', got {line!r}")
        files.append(str(data_dir / rel))
        labels.append(int(lab))
    return files, np.asarray(labels, dtype=np.int64)
