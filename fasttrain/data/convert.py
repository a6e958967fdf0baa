"""`fasttrain convert DATASET`: read a source once, write a training-ready dataset directory.

Each dataset registers a reader `(source: Path | None, progress_factory) -> Loaded`; `convert` picks
the source (given, or downloaded), reads it, and hands the arrays to the format writer.
"""

from __future__ import annotations

import inspect
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .sources import SourceError, read_cifar_binary, read_cifar_python, read_image_folder
from .tensor_format import Split, is_complete, write_tensor_dataset

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class Loaded:
    splits: dict[str, Split]
    classes: list[str]
    source: str
    extra_meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should hear about (e.g. a skipped split)


# A reader is `fn(source, progress_factory, **options) -> Loaded`; options (name, size, val_fraction,
# skip_bad) are keyword-only and passed only when the user gave them (see `read_dataset`).
Reader = Callable[..., Loaded]
READERS: dict[str, Reader] = {}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"dataset {name!r} is registered twice")
        READERS[name] = fn
        return fn

    return wrap


# ----------------------------------------------------------------------------- CIFAR-10 / CIFAR-100
CIFAR_DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def download_official(dataset: str, cache_dir: Path | None = None) -> Path:
    """Download the official archive (torchvision's downloader, md5-checked) into the user's cache."""
    from torchvision.datasets.utils import download_url

    url, md5 = CIFAR_DOWNLOADS[dataset]
    cache_dir = cache_dir or Path.home() / ".cache" / "fasttrain" / "downloads"
    target = cache_dir / PurePosixPath(url).name
    try:
        download_url(url, str(cache_dir), md5=md5)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "no archive"
        raise SourceError(
            f"could not download {url} ({type(e).__name__}); offline? pass --source PATH "
            "(an official archive, an image folder, or e.g. ../shared/data/cifar10-jpeg)"
        ) from e
    return target


def detect_cifar_archive(path: Path) -> str:
    """'python', 'binary' or 'images' for a CIFAR source path."""
    if path.is_dir():
        return "images"
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {PurePosixPath(m.name).name for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"{path}: not a readable tar archive ({e})") from e
    if not names:
        raise SourceError(f"{path}: empty archive")
    if {"data_batch_1", "test_batch"} <= names or {"train", "test", "meta"} <= names:
        return "python"
    if any(n.endswith(".bin") for n in names):
        return "binary"
    return "images"


def _cifar_reader(dataset: str) -> Reader:
    def read(source: Path | None, progress_factory: ProgressFactory | None) -> Loaded:
        path = source if source is not None else download_official(dataset)
        if not path.exists():
            raise SourceError(f"--source {path}: no such file or directory")
        kind = detect_cifar_archive(path)
        if kind == "python":
            splits, classes = read_cifar_python(path, dataset)
        elif kind == "binary":
            splits, classes = read_cifar_binary(path, dataset)
        else:
            splits, classes = read_image_folder(path, progress_factory=progress_factory)
        expected = 10 if dataset == "cifar10" else 100
        if len(classes) != expected:
            raise SourceError(f"{path}: found {len(classes)} classes, {dataset} has {expected}")
        return Loaded(splits, classes, source=f"{kind}:{path.resolve()}")

    return read


register_dataset("cifar10")(_cifar_reader("cifar10"))
register_dataset("cifar100")(_cifar_reader("cifar100"))


# ----------------------------------------------------------------------------- entry point
def default_out_dir(dataset: str) -> Path:
    return Path("data") / dataset


def read_dataset(
    dataset: str,
    source: str | Path | None,
    progress_factory: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Loaded:
    """Run `dataset`'s reader. Options left as None/False are dropped; one the reader does not take is an
    error naming the CLI option (e.g. --size for cifar10)."""
    if dataset not in READERS:
        raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    reader = READERS[dataset]
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    takes = {p.name for p in inspect.signature(reader).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(given) - takes)
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        accepted = ", ".join("--" + k.replace("_", "-") for k in sorted(takes)) or "none"
        raise SourceError(f"{opts}: not an option of dataset {dataset!r} (its options: {accepted})")
    loaded = reader(Path(source) if source is not None else None, progress_factory, **given)
    for note in loaded.notes:
        log(f"note: {note}")
    return loaded


def convert(
    dataset: str,
    *,
    source: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress_factory: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Path:
    """Convert `dataset` to the tensor format at `out` (default ./data/<name or dataset>); returns the directory.

    An existing complete dataset is reused unless `force`. `options` go to the reader (`read_dataset`):
    name (imagefolder), size, val_fraction, skip_bad.
    """
    if dataset not in READERS:
        raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    name = options.get("name") or dataset
    out_dir = Path(out) if out is not None else default_out_dir(name)
    if is_complete(out_dir) and not force:
        log(f"{out_dir} already holds a complete {dataset} dataset; reusing it (--force rebuilds)")
        return out_dir
    loaded = read_dataset(dataset, source, progress_factory, log, **options)
    write_tensor_dataset(
        out_dir, loaded.splits, loaded.classes, name=name, source=loaded.source, extra_meta=loaded.extra_meta
    )
    counts = ", ".join(f"{k} {len(v.labels)}" for k, v in loaded.splits.items())
    log(f"wrote {out_dir} ({counts}; {len(loaded.classes)} classes)")
    return out_dir


# ----------------------------------------------------------------------------- more datasets
# Imported last: these modules register their readers with `register_dataset` defined above.
from . import cars196, imagefolder, tinyimagenet  # noqa: E402,F401
