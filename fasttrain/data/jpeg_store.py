"""The "jpeg" format: every image kept at its own size as one JPEG, packed in tar shards with an index, for
datasets larger than memory (ImageNet, photo folders, Cars196 at full resolution).

Layout (one dataset per directory, meta.json as for every format)::

    meta.json                  format "jpeg", classes, counts, max_side, quality, per split its shards, and
                               the size and sha256 of every file
    <split>-000000.tar ...     WebDataset-compatible tar shards (about 256 MiB each): members
                               "<key>.jpg" (the JPEG) and "<key>.cls" (the label, ASCII), key = the
                               sample's position in the split (9 digits)
    <split>_index.npy          one row per sample in dataset order (INDEX_DTYPE): shard, byte offset of
                               the JPEG's data in the shard, its size, label, stored height and width
    <split>_labels.npy         int64 labels (as every format: subsets and label checks read only these)

What is stored: a JPEG (3-channel, 8-bit) whose longer side is <= max_side is copied byte for byte (no
generation loss). Anything else (a larger JPEG, a grey or CMYK JPEG, PNG, 16-bit, alpha) is decoded by
`decode.py`'s rule, shrunk with an antialiased filter so the longer side is max_side (only when over it),
and encoded once at `quality`. Every image is decoded once while converting (a copied JPEG at 1/8 scale:
the whole entropy-coded stream is still read, so a truncated or corrupt file is caught here, not in
training), which also gives the train mean/std.

Reading (`JpegStore`) needs only numpy: `np.load` of the index, then `os.pread` of each JPEG's bytes, no
mmap (mapped pages would count in the reader's resident memory), adjacent samples read in one call.

Writing (`write_jpeg_store`) runs the decode/transcode in a process pool (bytes in, bytes out; a bounded
number of chunks in flight, so memory does not grow with the dataset) while the parent reads the source
files and appends to the shard. Shards are written into `.<out>.partial/` beside the output; each
finished shard is fsynced, renamed and recorded in a journal with its sha256, so a convert that is
killed or interrupted continues from its last finished shard when the same command runs again (same
source file list and options; otherwise the partial folder is discarded). At the end the files move
into the output atomically (`fileio.atomic_directory`).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_directory, atomic_write, fsync_path
from .archive import read_regular_file, special_kind
from .decode import decoding, die_with_parent, to_rgb
from .errors import BadFile, DatasetError, SourceError
from .tensor_format import FORMAT_VERSION, WRITER, file_record, read_meta, save_labels, write_meta

FORMAT = "jpeg"
DEFAULT_MAX_SIDE = 512
DEFAULT_QUALITY = 90
SHARD_BYTES = 256 << 20
INDEX_DTYPE = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i4"), ("label", "<i8"),
                        ("height", "<i4"), ("width", "<i4")])
# What the journal keeps per written sample beyond the index: its position in the caller's list, the
# source image's size (readers with per-image metadata, e.g. boxes, map them with these).
# source image's size (readers with per-image metadata, e.g. boxes, map them with these), whether it was
# copied, and its pixel moments (the train mean/std).
_PARTIAL_DTYPE = np.dtype(INDEX_DTYPE.descr + [("item", "<i8"), ("source_height", "<i4"), ("source_width", "<i4"),
                                               ("copied", "u1"), ("mean", "<f8", 3), ("mean_sq", "<f8", 3)])
COALESCE_GAP = 64 << 10  # read two samples of one shard in one pread when at most this far apart
MAX_READ = 8 << 20  # ... and the run stays under this many bytes
CHUNK = 16  # images per task sent to a worker process
_JOURNAL = "journal.jsonl"
_REQUEST = "request.json"
_MARKER = ".fasttrain-jpeg-partial"
_ZERO_BLOCK = bytes(512)


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def sample_key(position: int) -> str:
    return f"{position:09d}"


# ============================================================================ reading
class JpegStore:
    """One split of a jpeg-format dataset: its index in memory, its JPEGs read on demand.

    `read(indices)` returns the JPEG bytes of those samples (dataset positions, any order, repeats
    allowed). Safe to use after fork (pread has no file position); picklable (file handles reopen).
    """

    MAX_OPEN = 256  # shard file descriptors kept open at once

    def __init__(self, data_dir: str | Path, split: str):
        self.dir = Path(data_dir)
        meta = read_meta(self.dir)
        if meta.get("format") != FORMAT:
            raise DatasetError(f"{self.dir}: a {meta.get('format', 'tensor')} dataset, not a jpeg store; convert "
                               f"with `fasttrain convert DATASET --format jpeg`")
        info = (meta.get("splits") or {}).get(split)
        if not isinstance(info, dict):
            raise DatasetError(f"{self.dir} has no split {split!r}; it has {sorted(meta.get('splits') or {})}")
        self.split = split
        self.meta = meta
        self.shards = [self.dir / name for name in info.get("shards", [])]
        self.index = load_index(self.dir, split, len(self.shards))
        self.labels = np.ascontiguousarray(self.index["label"])
        self.heights = np.ascontiguousarray(self.index["height"])
        self.widths = np.ascontiguousarray(self.index["width"])
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= self.MAX_OPEN:
                self.close()
            try:
                fd = os.open(self.shards[shard], os.O_RDONLY)
            except OSError as e:
                raise DatasetError(f"{self.shards[shard]}: cannot open ({e.strerror or e}); `fasttrain verify "
                                   f"{self.dir}` says more") from e
            self._fds[shard] = fd
        return fd

    def read(self, indices: Iterable[int] | np.ndarray) -> list[bytes]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.index)):
            raise IndexError(f"sample index out of range [0, {len(self.index)}) in {self.dir} split {self.split!r}")
        rows = self.index[idx]
        shard, offset, size = rows["shard"], rows["offset"], rows["size"].astype(np.int64)
        order = np.lexsort((offset, shard))
        out: list[bytes] = [b""] * len(idx)
        i = 0
        while i < len(order):
            first = order[i]
            start, end = offset[first], offset[first] + size[first]
            j = i + 1
            while j < len(order):  # extend the run while the next sample is in this shard and close by
                k = order[j]
                if (shard[k] != shard[first] or offset[k] - end > COALESCE_GAP
                        or max(end, offset[k] + size[k]) - start > MAX_READ):
                    break
                end = max(end, offset[k] + size[k])
                j += 1
            buf = os.pread(self._fd(int(shard[first])), int(end - start), int(start))
            if len(buf) != end - start:
                raise DatasetError(f"{self.shards[shard[first]]}: truncated (read {len(buf)} of {end - start} "
                                   f"bytes at offset {start}); `fasttrain verify {self.dir}` says more")
            view = memoryview(buf)
            for k in order[i:j]:
                a = offset[k] - start
                out[k] = bytes(view[a : a + size[k]])
            i = j
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def load_index(data_dir: Path, split: str, n_shards: int) -> np.ndarray:
    """`<split>_index.npy`, checked: the index dtype, shard numbers in range, no negative sizes."""
    path = Path(data_dir) / f"{split}_index.npy"
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable index ({e}); re-convert with --force") from e
    if index.dtype != INDEX_DTYPE or index.ndim != 1:
        raise DatasetError(f"{path}: index of dtype {index.dtype}, shape {index.shape}; expected {INDEX_DTYPE} "
                           "(one row per sample); re-convert with --force")
    if len(index) and (index["shard"].min() < 0 or index["shard"].max() >= n_shards or index["size"].min() <= 0
                       or index["offset"].min() < 0):
        raise DatasetError(f"{path}: rows point outside the {n_shards} shards of meta.json; re-convert with --force")
    return index


def check_shards(data_dir: Path, split: str, shards: list[str], index: np.ndarray) -> None:
    """Is the index consistent with the shards? Every sample lies inside its shard, after a tar header
    that names it `<key>.jpg` (read the 512-byte header before each JPEG: cheap, one pread per sample)."""
    files = [open(data_dir / s, "rb") for s in shards]
    try:
        _check_headers(data_dir, split, shards, index, files)
    finally:
        for f in files:
            f.close()


def _check_headers(data_dir: Path, split: str, shards: list[str], index: np.ndarray, files: list) -> None:
    sizes = [os.fstat(f.fileno()).st_size for f in files]
    for position, row in enumerate(index):
        path = data_dir / shards[row["shard"]]
        if row["offset"] < 512 or row["offset"] + row["size"] > sizes[row["shard"]]:
            raise DatasetError(f"{data_dir / f'{split}_index.npy'}: sample {position} lies outside {path}")
        header = os.pread(files[row["shard"]].fileno(), 512, int(row["offset"]) - 512)
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except tarfile.TarError as e:
            raise DatasetError(f"{path}: no tar header before sample {position}'s JPEG ({e})") from e
        if info.name != f"{sample_key(position)}.jpg" or info.size != row["size"]:
            raise DatasetError(f"{path}: the member at the index's offset for sample {position} is {info.name!r} "
                               f"({info.size} bytes), expected {sample_key(position)}.jpg ({row['size']} bytes)")


# ============================================================================ one image -> stored JPEG
@dataclass
class Prepared:
    """A worker's answer for one image: the bytes to store and what the index and statistics need."""

    jpeg: bytes
    height: int
    width: int
    source_height: int
    source_width: int
    copied: bool  # stored byte for byte
    mean: np.ndarray  # per channel, in [0, 1], of the decoded image (for the train mean/std)
    mean_sq: np.ndarray


def capped_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the longer side shrunk to `max_side` (aspect kept, rounded, at least 1 px)."""
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return (max_side, max(1, round(w * scale))) if h >= w else (max(1, round(h * scale)), max_side)


def _moments(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(0), (x * x).mean(0)


def prepare_image(data: bytes, name: str, max_side: int, quality: int) -> Prepared:
    """Decode `data` once: copy a conforming JPEG within the cap, else shrink (when over it) and encode."""
    with decoding(name):
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if img.format == "JPEG" and img.mode == "RGB" and max(h, w) <= max_side:
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # DCT-scaled: still reads every byte
                small = np.asarray(img.convert("RGB"))
                return Prepared(data, h, w, h, w, True, *_moments(small))
            th, tw = capped_size(h, w, max_side)
            if img.format == "JPEG":
                img.draft(None, (tw, th))  # decode at the smallest DCT scale still >= the target size
            rgb = to_rgb(img)
    if rgb.shape[:2] != (th, tw):
        rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.LANCZOS))  # antialiased shrink
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return Prepared(buf.getvalue(), th, tw, h, w, False, *_moments(rgb[::2, ::2]))


def _prepare_chunk(args: tuple[list[tuple[str, bytes | BadFile]], int, int, bool]) -> list[Prepared | BadFile]:
    items, max_side, quality, skip_bad = args
    out: list[Prepared | BadFile] = []
    for name, data in items:
        if isinstance(data, BadFile):
            out.append(data)
            continue
        try:
            out.append(prepare_image(data, name, max_side, quality))
        except SourceError as e:
            if not skip_bad:
                raise
            out.append(BadFile(name, str(e)))
    return out


# ============================================================================ the shard writer
class _ShardWriter:
    """Appends `<key>.jpg` + `<key>.cls` members to a tar file, hashing as it goes; `finish` writes the
    end-of-archive blocks, fsyncs and renames `<name>.part` to `<name>`. Headers are ustar with mtime 0,
    so the same input gives the same bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.f = open(self.part, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)

    def _member(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._write(info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict"))
        offset = self.size
        self._write(data)
        if len(data) % 512:
            self._write(bytes(512 - len(data) % 512))
        return offset

    def add(self, key: str, jpeg: bytes, label: int) -> int:
        """Append one sample; returns the byte offset of its JPEG data."""
        offset = self._member(f"{key}.jpg", jpeg)
        self._member(f"{key}.cls", str(int(label)).encode())
        return offset

    def finish(self) -> dict:
        self._write(_ZERO_BLOCK * 2)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.part, self.path)
        return {"bytes": self.size, "sha256": self.sha.hexdigest()}

    def abandon(self) -> None:
        self.f.close()
        self.part.unlink(missing_ok=True)


# ============================================================================ the partial folder (resume)
class _Partial:
    """`.<out>.partial/` beside the output: finished shards, their index rows and a journal line each.

    Holds an exclusive lock while a convert writes it. `request.json` identifies the request (the source
    file list and the options); a folder of another request is discarded."""

    def __init__(self, out_dir: Path, request: dict, log: Callable[[str], None]):
        self.dir = out_dir.parent / f".{out_dir.name}.partial"
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        if self.dir.is_symlink() or (self.dir.exists() and not (self.dir / _MARKER).is_file()
                                     and any(self.dir.iterdir())):
            raise DatasetError(f"{self.dir}: exists but fasttrain did not write it; move it away (fasttrain "
                               "keeps an interrupted convert there)")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / _MARKER).touch()
        self._lock = open(self.dir / "lock", "w")
        try:  # a POSIX lock: owned by this process only, so the forked workers never hold it after us
            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            raise DatasetError(f"--out {out_dir}: another convert is writing it now (its partial output "
                               f"{self.dir} is locked); wait for it to finish or stop it") from e
        previous = None
        try:
            previous = json.loads((self.dir / _REQUEST).read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            pass
        self.entries: list[dict] = []
        if previous == fingerprint:
            self.entries = self._valid_entries()
            if self.entries:
                done = sum(e["count"] + len(e["skipped"]) for e in self.entries)
                log(f"resuming an interrupted convert: {len(self.entries)} shard(s), {done} images already done")
        elif previous is not None:
            log(f"discarding {self.dir}: an interrupted convert of another source or other options")
        keep = {_MARKER, "lock", _JOURNAL, _REQUEST} | {e["file"] for e in self.entries} | {
            e["rows"] for e in self.entries}
        for p in self.dir.iterdir():
            if p.name not in keep:
                p.unlink() if p.is_file() or p.is_symlink() else shutil.rmtree(p)
        if previous != fingerprint:
            (self.dir / _JOURNAL).unlink(missing_ok=True)
            _write_synced(self.dir / _REQUEST, json.dumps({"fingerprint": fingerprint, "request": request}))
        else:  # rewrite the journal as its valid prefix (drops a torn last line)
            _write_synced(self.dir / _JOURNAL, "".join(json.dumps(e) + "\n" for e in self.entries))
        self._journal = open(self.dir / _JOURNAL, "a")

    def _valid_entries(self) -> list[dict]:
        """The journal's entries whose shard and rows files are there with the recorded sizes, up to the
        first that is not (a torn last line or a shard lost in between ends the prefix)."""
        entries = []
        try:
            lines = (self.dir / _JOURNAL).read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                e = json.loads(line)
                ok = ((e["file"] is None or (self.dir / e["file"]).stat().st_size == e["bytes"])
                      and (self.dir / e["rows"]).stat().st_size == e["rows_bytes"])
            except (ValueError, KeyError, TypeError, OSError):
                ok = False
            if not ok:
                break
            entries.append(e)
        return entries

    def record(self, entry: dict) -> None:
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.entries.append(entry)

    def close(self) -> None:
        self._journal.close()
        self._lock.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# ============================================================================ writing
Item = tuple["str | Path | bytes", int]


@dataclass
class WriteResult:
    """What `write_jpeg_store` did, per split: which of the caller's items were stored (in order), their
    source sizes, the skipped files, and how many were copied byte for byte."""

    out_dir: Path
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    source_sizes: dict[str, np.ndarray] = field(default_factory=dict)  # (n, 2): height, width
    skipped: list[BadFile] = field(default_factory=list)
    copied: dict[str, int] = field(default_factory=dict)


def _item_name(item: str | Path | bytes, split: str, i: int) -> str:
    if isinstance(item, bytes):
        return f"{split}[{i}] <{hashlib.sha256(item).hexdigest()[:16]}>"
    return str(item)


def _read_item(item: str | Path | bytes, read: Callable[[str], bytes] | None) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str) and read is not None:
        return read(item)
    path = Path(item)
    try:
        kind = special_kind(os.lstat(path).st_mode)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from e
    if kind is not None:
        raise SourceError(f"{path}: a {kind}, not read (only regular files are)")
    return read_regular_file(path)


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))


def write_jpeg_store(
    out_dir: str | Path,
    splits: dict[str, Iterable[Item]],
    classes: list[str],
    *,
    name: str | None = None,
    source: str = "",
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_QUALITY,
    workers: int | None = None,
    shard_bytes: int = SHARD_BYTES,
    skip_bad: bool = False,
    read: Callable[[str], bytes] | None = None,
    where: str = "",
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    extra_meta: dict | None = None,
    meta_for: Callable[[WriteResult], dict] | None = None,
    log: Callable[[str], None] = print,
) -> WriteResult:
    """Write `splits` ({split: [(image, label), ...]}) as a jpeg store at `out_dir`; see the module doc.

    An image is a Path (a regular file), bytes, or a str name given to `read` (a reader's source tree).
    A file that cannot be read or decoded raises SourceError naming it (prefixed by `where`, e.g. the
    source folder); with `skip_bad` it is skipped and listed in meta.json. `meta_for(result)` adds
    entries to meta.json that depend on which items were kept. Whether `out_dir` may be replaced is the
    caller's decision (`outdir.plan_output`).
    """
    out_dir = Path(out_dir)
    if "train" not in splits:
        raise DatasetError("a dataset needs a 'train' split (its statistics normalise every split)")
    if len(classes) < 2:
        raise DatasetError(f"found {len(classes)} class: a classifier needs at least 2 classes")
    if not 16 <= max_side <= 16384:
        raise DatasetError(f"--max-side must lie in [16, 16384] pixels, got {max_side}")
    if not 1 <= quality <= 100:
        raise DatasetError(f"--jpeg-quality must lie in [1, 100], got {quality}")
    lists = {s: list(items) for s, items in splits.items()}
    for s, items in lists.items():
        labels = [lab for _, lab in items]
        if not items:
            raise DatasetError(f"split {s!r} has no images")
        if min(labels) < 0 or max(labels) >= len(classes):
            raise DatasetError(f"split {s!r}: labels must lie in [0, {len(classes)}), got [{min(labels)}, "
                               f"{max(labels)}]")
    names = {s: [_item_name(it, s, i) for i, (it, _) in enumerate(items)] for s, items in lists.items()}
    request = {"format_version": FORMAT_VERSION, "source": source, "max_side": max_side, "quality": quality,
               "shard_bytes": shard_bytes, "skip_bad": skip_bad, "classes": list(classes),
               "items": {s: hashlib.sha256(json.dumps([names[s], [int(lab) for _, lab in lists[s]]]).encode())
                         .hexdigest() for s in lists}}
    partial = _Partial(out_dir, request, log)
    workers = workers or os.cpu_count() or 1
    pool = _pool(workers)
    try:
        for split, items in lists.items():
            _write_split(partial, split, items, names[split], pool, workers, max_side=max_side, quality=quality,
                         shard_bytes=shard_bytes, skip_bad=skip_bad, read=read, where=where,
                         progress_factory=progress_factory)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        partial.close()
        raise
    if pool is not None:
        pool.shutdown()
    try:
        result = _publish(partial, out_dir, lists, classes, name=name or out_dir.name, source=source,
                          max_side=max_side, quality=quality, extra_meta=extra_meta, meta_for=meta_for)
    except BaseException:
        partial.close()
        raise
    partial.remove()
    return result


def _write_split(partial: _Partial, split: str, items: list[Item], names: list[str],
                 pool: ProcessPoolExecutor | None, workers: int, *, max_side: int, quality: int, shard_bytes: int,
                 skip_bad: bool, read: Callable[[str], bytes] | None, where: str,
                 progress_factory: Callable[[str, int], Callable[[int], None]] | None) -> None:
    done = [e for e in partial.entries if e["split"] == split]
    start = done[-1]["end"] if done else 0
    position = sum(e["count"] for e in done)  # the next sample's key
    shard_no = len(done)
    progress = progress_factory(f"{split}: packing JPEGs", len(items)) if progress_factory else None
    if progress and start:
        progress(start)
    prefix = f"{where}: " if where else ""

    def load(i: int) -> tuple[str, bytes | BadFile]:
        try:
            return names[i], _read_item(items[i][0], read)
        except SourceError as e:
            if not skip_bad:
                raise SourceError(f"{prefix}{e}; pass --skip-bad to skip such files (they are then listed in "
                                  "the dataset's meta.json)") from e
            return names[i], BadFile(names[i], str(e))

    def chunks():
        for a in range(start, len(items), CHUNK):
            b = min(a + CHUNK, len(items))
            yield a, (([load(i) for i in range(a, b)]), max_side, quality, skip_bad)

    pending: deque = deque()
    todo = chunks()
    writer: _ShardWriter | None = None
    rows: list[tuple] = []
    skipped: list[dict] = []
    first = start

    def close_shard(end: int) -> None:
        nonlocal writer, rows, skipped, first, shard_no
        rec = writer.finish() if writer is not None else None
        rows_name = f"{split}-{shard_no:06d}.rows.npy"
        arr = np.array(rows, dtype=_PARTIAL_DTYPE)
        tmp = partial.dir / (rows_name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, partial.dir / rows_name)
        fsync_path(partial.dir)
        partial.record({"split": split, "file": shard_name(split, shard_no) if rec else None, "rows": rows_name,
                        "rows_bytes": (partial.dir / rows_name).stat().st_size, "start": first, "end": end,
                        "count": len(rows), "skipped": skipped, **(rec or {"bytes": 0, "sha256": None})})
        writer, rows, skipped, first = None, [], [], end
        shard_no += rec is not None

    def results():
        """Each chunk's answers, in order, keeping at most 2 x workers chunks in flight."""
        if pool is None:
            for a, args in todo:
                yield a, _prepare_chunk(args)
            return
        for a, args in todo:
            pending.append((a, pool.submit(_prepare_chunk, args)))
            if len(pending) >= 2 * workers:
                a0, fut = pending.popleft()
                yield a0, fut.result()
        while pending:
            a0, fut = pending.popleft()
            yield a0, fut.result()

    try:
        for a, answers in results():
            for i, answer in enumerate(answers, a):
                if isinstance(answer, BadFile):
                    skipped.append({"file": answer.file, "error": answer.error})
                    continue
                if writer is not None and writer.size + len(answer.jpeg) + 2048 > shard_bytes and rows:
                    close_shard(i)
                if writer is None:
                    writer = _ShardWriter(partial.dir / shard_name(split, shard_no))
                offset = writer.add(sample_key(position), answer.jpeg, items[i][1])
                rows.append((shard_no, offset, len(answer.jpeg), items[i][1], answer.height, answer.width, i,
                             answer.source_height, answer.source_width, answer.copied,
                             tuple(answer.mean), tuple(answer.mean_sq)))
                position += 1
            if progress:
                progress(len(answers))
    except SourceError as e:
        if writer is not None:
            writer.abandon()
        if where and not str(e).startswith(prefix):
            raise SourceError(f"{prefix}{e}; pass --skip-bad to skip such files (they are then listed in the "
                              "dataset's meta.json)") from e
        raise
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None or skipped or start < len(items):
        close_shard(len(items))


def _publish(partial: _Partial, out_dir: Path, lists: dict[str, list[Item]], classes: list[str], *, name: str,
             source: str, max_side: int, quality: int, extra_meta: dict | None,
             meta_for: Callable[[WriteResult], dict] | None) -> WriteResult:
    """Move the finished shards into `out_dir` atomically, with the index, labels and meta.json."""
    result = WriteResult(out_dir)
    split_meta: dict[str, dict] = {}
    moves: list[tuple[Path, str]] = []
    stats = np.zeros(7)  # pixel-weighted sums of mean (3) and mean_sq (3), and the pixel count
    copied_total = 0
    for split in lists:
        entries = [e for e in partial.entries if e["split"] == split]
        rows = np.concatenate([np.load(partial.dir / e["rows"]) for e in entries])
        if not len(rows):
            raise SourceError(f"no decodable images in split {split!r}")
        index = np.empty(len(rows), dtype=INDEX_DTYPE)
        for key in INDEX_DTYPE.names:
            index[key] = rows[key]
        shards = [e["file"] for e in entries if e["file"]]
        result.kept[split] = rows["item"].copy()
        result.source_sizes[split] = np.stack([rows["source_height"], rows["source_width"]], axis=1)
        result.skipped += [BadFile(b["file"], b["error"]) for e in entries for b in e["skipped"]]
        result.copied[split] = int(rows["copied"].sum())
        copied_total += result.copied[split]
        if split == "train":
            area = rows["height"].astype(np.float64) * rows["width"]
            stats = np.concatenate([area @ rows["mean"], area @ rows["mean_sq"], [area.sum()]])
        labels = index["label"]
        split_meta[split] = {
            "count": len(index), "shards": shards, "copied": result.copied[split],
            "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
            "label_range": [int(labels.min()), int(labels.max())],
            "height_range": [int(index["height"].min()), int(index["height"].max())],
            "width_range": [int(index["width"].min()), int(index["width"].max())],
            "files": {e["file"]: {"bytes": e["bytes"], "sha256": e["sha256"]} for e in entries if e["file"]},
        }
        moves += [(partial.dir / f, f) for f in shards]
        split_meta[split]["_index"] = index
    mean = stats[:3] / stats[6]
    std = np.sqrt(np.maximum(stats[3:6] / stats[6] - mean * mean, 0.0))
    meta = {
        "writer": WRITER, "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "classes": list(classes), "num_classes": len(classes), "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mean": mean.round(6).tolist(), "std": std.round(6).tolist(),  # of the train images' pixels
        "shape": [max_side, max_side, 3],  # the bound of every stored image; each one's size is in the index
        "max_side": max_side, "jpeg_quality": quality,
        "splits": split_meta,
    }
    meta.update(extra_meta or {})
    total = sum(len(v) for v in lists.values())
    meta["stored"] = {"copied": copied_total, "encoded": sum(s["count"] for s in split_meta.values()) - copied_total,
                      "of": total}
    meta["skipped"] = {"count": len(result.skipped),
                       "files": [{"file": b.file, "error": b.error} for b in result.skipped]
                       + list((extra_meta or {}).get("skipped", {}).get("files", []))}
    meta["skipped"]["count"] = len(meta["skipped"]["files"])
    if meta_for is not None:
        meta.update(meta_for(result))
    with atomic_directory(out_dir) as tmp:
        for src, dst in moves:  # linked, not moved: if publishing fails, the partial folder still has them
            try:
                os.link(src, tmp / dst)
            except OSError:  # a filesystem without hard links
                os.replace(src, tmp / dst)
        for split, info in split_meta.items():
            index = info.pop("_index")
            path = tmp / f"{split}_index.npy"
            np.save(path, index)
            info["files"][path.name] = file_record(path)
            info["files"].update(save_labels(tmp, split, index["label"]))
        write_meta(tmp, meta)
    return result
