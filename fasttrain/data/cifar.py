"""`fasttrain convert cifar10|cifar100`: the official python or binary archive (downloaded when no
--source is given), or an image folder / tarball(s) of one (e.g. the offline CIFAR-10 JPEG copy)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .archive import ARCHIVE_ERRORS, truncated_archive
from .errors import SourceError
from .imagefolder import read_image_tree
from .registry import Loaded, ProgressFactory, register_dataset
from .sources import open_tar, read_cifar_binary, read_cifar_python

CIFAR_DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def download_official(dataset: str, cache_dir: Path | None = None) -> Path:
    """Download the official archive (torchvision's downloader, md5-checked) into the user's cache."""
    from torchvision.datasets.utils import download_url  # optional heavy import, only when downloading

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
    with open_tar(path) as tar:
        try:
            names = {PurePosixPath(m.name).name for m in tar.getmembers() if m.isfile()}
        except ARCHIVE_ERRORS as e:
            raise truncated_archive(path, e) from e
    if not names:
        raise SourceError(f"{path}: empty archive")
    if {"data_batch_1", "test_batch"} <= names or {"train", "test", "meta"} <= names:
        return "python"
    if any(n.endswith(".bin") for n in names):
        return "binary"
    return "images"


def _cifar_reader(dataset: str):
    def read(source: Path | None, progress_factory: ProgressFactory | None = None, *,
             skip_bad: bool = False) -> Loaded:
        path = source if source is not None else download_official(dataset)
        if not path.exists():
            raise SourceError(f"--source {path}: no such file or directory")
        kind = detect_cifar_archive(path)
        extra: dict = {}
        notes: list[str] = []
        if kind == "python":
            splits, classes = read_cifar_python(path, dataset)
        elif kind == "binary":
            splits, classes = read_cifar_binary(path, dataset)
        else:  # CIFAR is 32x32: images of other sizes are not CIFAR, so there is no --size to suggest
            splits, classes, extra, notes = read_image_tree(
                path, progress_factory, skip_bad=skip_bad, holdout=False,
                resize_hint=f"{dataset} images are all 32x32: remove the odd ones, or convert the folder with "
                            "`fasttrain convert imagefolder --name NAME --size 32`")
            extra.pop("resize", None)
        expected = NUM_CLASSES[dataset]
        if len(classes) != expected:
            raise SourceError(f"{path}: found {len(classes)} classes, {dataset} has {expected}")
        return Loaded(splits, classes, source=f"{kind}:{path.resolve()}", extra_meta=extra, notes=notes)

    return read


register_dataset("cifar10")(_cifar_reader("cifar10"))
register_dataset("cifar100")(_cifar_reader("cifar100"))
