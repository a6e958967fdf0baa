"""`fasttrain convert imagefolder --source DIR_OR_ARCHIVE --name NAME`: any `<split>/<class>/<image>` tree;
also the reader of CIFAR sources given as image folders (`read_image_tree`).

Layouts (a single top folder, e.g. the one a tar or zip unpacks to, is looked through; archives directly
in the source folder, e.g. one tarball per split, are read in place: see `archive.py`):

    <split>/<class>/<image>   split in train | val | valid | validation | test ('train' required)
    <class>/<image>           no split folders: a stratified, seeded `val_fraction` becomes 'test'

The trainer evaluates the 'test' split: with train + val but no test folder, 'val' is written as 'test'
(recorded in meta.json); with train only, `val_fraction` of it is held out as 'test'. Images must share
one size unless `size` is given (short side resized to `size`, then centre-cropped to size x size), or the
jpeg format keeps each at its own size (`list_imagefolder`: the same splits, files undecoded).
Non-image files at the top of the source (README, checksums) are ignored, and a note says so.

Bad files are never dropped silently: a file that does not decode (corrupt, truncated, not an image, a
decompression bomb), a link or a special file raises an error naming it; with `skip_bad` it is skipped,
and the count and the list go into the dataset's meta.json under "skipped". The decode helpers here are
shared by the Tiny ImageNet and Cars196 readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .archive import IMAGE_SUFFIXES, SourceTree
from .decode import decode_many, split_bad
from .errors import BadFile, SourceError
from .registry import Listed, Loaded, ProgressFactory, register_dataset, register_listing
from .splits import stratified_holdout
from .tensor_format import Split

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DEFAULT_VAL_FRACTION = 0.1
DECODE_BLOCK = 4096  # images decoded per block, and their compressed bytes at most (a block ends at either):
DECODE_BLOCK_BYTES = 128 << 20  # bounds the memory held as compressed bytes (many files just under the cap)
RESIZE_HINT = ("pass --size S to resize the short side to S and centre-crop, or --format jpeg to keep each "
               "image at its own size (streamed from disk)")


# ----------------------------------------------------------------------------- shared decode helpers
def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def decode_files(
    tree: SourceTree,
    names: Sequence[str],
    *,
    size: int | None,
    skip_bad: bool,
    label: str,
    progress_factory: ProgressFactory | None = None,
    resize_hint: str = RESIZE_HINT,
) -> tuple[np.ndarray, list[int], list[BadFile]]:
    """Decode `names` from `tree` into one uint8 (N, H, W, 3) array, block by block.

    Returns (images, indices into `names` that were kept, bad files). Without `skip_bad` the first bad
    file raises. All images must share one shape unless `size` is given; the error names an odd file and
    ends with `resize_hint` (what the user can do, for a dataset that takes --size or not).
    """
    progress = progress_factory(f"decoding {label}", len(names)) if progress_factory and names else None
    out: np.ndarray | None = None
    kept: list[int] = []
    bad: list[BadFile] = []
    first_name = ""
    start = 0
    while start < len(names):
        items, held = [], 0
        while start + len(items) < len(names) and len(items) < DECODE_BLOCK and held < DECODE_BLOCK_BYTES:
            items.append((names[start + len(items)], tree.read(names[start + len(items)])))
            held += len(items[-1][1])
        block = [n for n, _ in items]
        try:
            decoded = decode_many(items, size=size, progress=progress, skip_bad=skip_bad)
        except SourceError as e:
            raise SourceError(f"{tree.path}: {e}; pass --skip-bad to skip such files (they are then listed "
                              "in the dataset's meta.json)") from e
        images, idx, block_bad = split_bad(decoded)
        bad.extend(block_bad)
        for i, im in zip(idx, images):
            if out is None:
                out = np.empty((len(names),) + im.shape, dtype=np.uint8)
                first_name = block[i]
            if im.shape != out.shape[1:]:
                raise SourceError(
                    f"{tree.path}: images differ in size ({first_name!r} is {out.shape[1:]}, {block[i]!r} is "
                    f"{im.shape}); {resize_hint}"
                )
            out[len(kept)] = im
            kept.append(start + i)
        start += len(block)
    if out is None:
        raise SourceError(f"{tree.path}: no decodable images in split {label!r}")
    return out[: len(kept)], kept, bad


def skipped_meta(bad: list[BadFile], other: list[BadFile] = ()) -> dict:
    """meta.json's record of what was skipped (always present, so 'nothing skipped' is explicit)."""
    files = [{"file": b.file, "error": b.error} for b in list(other) + list(bad)]
    return {"skipped": {"count": len(files), "files": files}}


def bad_or_raise(name: str, reason: str, skip_bad: bool, source: Path) -> BadFile:
    """A file that is not an image where images are expected: an error, or a record with `skip_bad`."""
    if not skip_bad:
        raise SourceError(f"{source}: {name}: {reason}; remove it, or pass --skip-bad to skip it (it is then "
                          "listed in the dataset's meta.json)")
    return BadFile(name, reason)


# ----------------------------------------------------------------------------- layout detection
def _strip_common_root(names: list[str]) -> tuple[str, list[tuple[str, ...]]]:
    """Drop leading folders shared by every file (a tar's or zip's top folder), but never a split folder."""
    parts = [PurePosixPath(n).parts for n in names]
    depth = 0
    while all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        if parts[0][depth].lower() in SPLIT_ALIASES:
            break
        depth += 1
    return "/".join(parts[0][:depth]), [p[depth:] for p in parts]


def scan_tree(tree: SourceTree, skip_bad: bool
              ) -> tuple[dict[str, dict[str, list[str]]], bool, list[BadFile], list[str]]:
    """{split: {class: [file names]}}, whether split folders exist, non-image files found in the tree,
    and non-image files at its top (ignored: READMEs, checksums)."""
    images = [n for n in tree.names if is_image_name(n)]
    if not images:
        raise SourceError(f"{tree.path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    top, rel = _strip_common_root(images)
    top_depth = len(PurePosixPath(top).parts) if top else 0
    others = [n for n in tree.names if not is_image_name(n)]
    ignored = [n for n in others if len(PurePosixPath(n).parts) <= top_depth + 1]
    bad = [bad_or_raise(n, f"not an image file (suffix {PurePosixPath(n).suffix or 'none'!r})", skip_bad,
                        tree.path) for n in others if n not in ignored]
    has_splits = all(len(p) == 3 for p in rel) and all(p[0].lower() in SPLIT_ALIASES for p in rel)
    grouped: dict[str, dict[str, list[str]]] = {}
    for name, p in zip(images, rel):
        if has_splits:
            split, cls = SPLIT_ALIASES[p[0].lower()], p[1]
        elif len(p) == 2:
            split, cls = "", p[0]
        else:
            want = "<split>/<class>/<image> or <class>/<image>"
            raise SourceError(f"{tree.path}: image {name!r} is not at {want} (all images must use one layout)")
        grouped.setdefault(split, {}).setdefault(cls, []).append(name)
    if has_splits and "train" not in grouped:
        raise SourceError(f"{tree.path}: split folders {sorted(grouped)} found but no 'train' folder")
    for folder in tree.empty_dirs:  # refused, not dropped: it would silently remove a class the user meant
        parts = PurePosixPath(folder).parts[top_depth:]
        train_class = (len(parts) == 2 and SPLIT_ALIASES.get(parts[0].lower()) == "train") if has_splits else len(parts) == 1
        if train_class and not parts[-1].startswith("."):
            raise SourceError(f"{tree.path}: {folder}/ is an empty class folder (no image files); every class needs "
                              "training images: add them, or remove the folder if the class is not wanted")
    return grouped, has_splits, bad, ignored


@dataclass
class TreeListing:
    """An image tree's files per split, before decoding: what `read_image_tree` decodes and the jpeg
    format stores as they are."""

    tree: SourceTree
    listings: dict[str, tuple[list[str], np.ndarray]]  # split -> (file names, labels), dataset order
    classes: list[str]
    bad_files: list[BadFile]
    aliases: dict[str, str]  # split -> where it came from, when not its own folder
    notes: list[str]


def list_image_tree(source: Path, *, val_fraction: float | None = None, skip_bad: bool = False, seed: int = 0,
                    holdout: bool = True) -> TreeListing:
    """The files of an image tree per split (see the module doc). Without `holdout`, a tree with no val/test
    folder is an error (the dataset has an official test split that must not be replaced by a draw)."""
    tree = SourceTree(source, skip_bad=skip_bad)
    grouped, has_splits, bad_files, ignored = scan_tree(tree, skip_bad)
    bad_files = tree.skipped + bad_files
    classes = sorted(grouped["train" if has_splits else ""])
    for split, by_class in grouped.items():
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise SourceError(f"{source}: split {split!r} has class folders {unknown} absent from train")

    def listing(by_class: dict[str, list[str]]) -> tuple[list[str], np.ndarray]:
        names, labels = [], []
        for label, cls in enumerate(classes):
            for n in sorted(by_class.get(cls, [])):
                names.append(n)
                labels.append(label)
        return names, np.asarray(labels, dtype=np.int64)

    listings = {split: listing(by_class) for split, by_class in grouped.items()}
    notes: list[str] = []
    if ignored:
        notes.append(f"ignored {len(ignored)} non-image file(s) at the top of the source: {', '.join(ignored[:5])}")
    aliases: dict[str, str] = {}
    has_holdout = "test" in listings or "val" in listings
    if not has_holdout and not holdout:
        raise SourceError(f"{source}: found a train split but no test split (no test/ or val/ folder, or no "
                          "test.tar.gz beside train.tar.gz); give the whole source, with both splits")
    if val_fraction is not None and has_holdout:
        raise SourceError(f"--val-fraction: {source} already has split folders {sorted(listings)}; "
                          "it applies only to a tree without a val/test folder")
    if not has_holdout:
        frac = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        names, labels = listings.pop("train" if has_splits else "")
        if not 0 < frac < 1:
            raise SourceError(f"--val-fraction must lie in (0, 1), got {frac}")
        hold = stratified_holdout(labels, frac, seed)
        listings["train"] = ([n for n, h in zip(names, hold) if not h], labels[~hold])
        listings["test"] = ([n for n, h in zip(names, hold) if h], labels[hold])
        aliases["test"] = f"stratified {frac:g} of the images (seed {seed}), held out of train"
        notes.append(f"no val/test folder: held out {hold.sum()} images ({frac:g} per class) as 'test'")
    elif "test" not in listings:
        listings["test"] = listings.pop("val")
        aliases["test"] = "the 'val' folder"
        notes.append("no test folder: the 'val' folder is written as the 'test' split")
    return TreeListing(tree, dict(sorted(listings.items())), classes, bad_files, aliases, notes)


def read_image_tree(
    source: Path,
    progress_factory: ProgressFactory | None = None,
    *,
    size: int | None = None,
    val_fraction: float | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    holdout: bool = True,
    resize_hint: str = RESIZE_HINT,
) -> tuple[dict[str, Split], list[str], dict, list[str]]:
    """(splits, classes, extra meta, notes) of an image tree, decoded (`list_image_tree` says which files)."""
    if size is not None and size < 1:
        raise SourceError(f"--size must be >= 1, got {size}")
    listed = list_image_tree(source, val_fraction=val_fraction, skip_bad=skip_bad, seed=seed, holdout=holdout)
    bad_files, notes = listed.bad_files, listed.notes
    splits: dict[str, Split] = {}
    for split, (names, labels) in listed.listings.items():
        images, kept, bad = decode_files(listed.tree, names, size=size, skip_bad=skip_bad, label=split,
                                         progress_factory=progress_factory, resize_hint=resize_hint)
        bad_files.extend(bad)
        splits[split] = Split(images, labels[kept])
    if bad_files:
        notes.append(f"skipped {len(bad_files)} bad file(s) (--skip-bad); listed in meta.json under 'skipped'")
    extra = {**skipped_meta(bad_files), "split_sources": listed.aliases, "resize": size}
    return splits, listed.classes, extra, notes


# ----------------------------------------------------------------------------- the reader
@register_dataset("imagefolder")
def read_imagefolder(
    source: Path | None,
    progress_factory: ProgressFactory | None = None,
    *,
    name: str | None = None,
    size: int | None = None,
    val_fraction: float | None = None,
    skip_bad: bool = False,
    seed: int = 0,
) -> Loaded:
    if source is None:
        raise SourceError("imagefolder: --source DIR_OR_ARCHIVE is required (a <split>/<class>/* or <class>/* tree)")
    if not name:
        raise SourceError("imagefolder: --name NAME is required (it names the dataset and its default --out)")
    splits, classes, extra, notes = read_image_tree(source, progress_factory, size=size, val_fraction=val_fraction,
                                                    skip_bad=skip_bad, seed=seed)
    return Loaded(splits, classes, source=f"imagefolder:{Path(source).resolve()}", extra_meta=extra, notes=notes)


@register_listing("imagefolder")
def list_imagefolder(
    source: Path | None,
    *,
    name: str | None = None,
    val_fraction: float | None = None,
    skip_bad: bool = False,
    seed: int = 0,
) -> Listed:
    """The jpeg format's view of an image folder: the same splits as `read_imagefolder`, undecoded."""
    if source is None:
        raise SourceError("imagefolder: --source DIR_OR_ARCHIVE is required (a <split>/<class>/* or <class>/* tree)")
    if not name:
        raise SourceError("imagefolder: --name NAME is required (it names the dataset and its default --out)")
    listed = list_image_tree(source, val_fraction=val_fraction, skip_bad=skip_bad, seed=seed)
    splits = {split: list(zip(names, labels.tolist())) for split, (names, labels) in listed.listings.items()}
    return Listed(splits, listed.classes, source=f"imagefolder:{Path(source).resolve()}", read=listed.tree.read,
                  where=str(listed.tree.path), notes=listed.notes,
                  extra_meta={**skipped_meta(listed.bad_files), "split_sources": listed.aliases})
