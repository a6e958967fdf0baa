"""`fasttrain convert tinyimagenet --source PATH`: the official `tiny-imagenet-200` layout, zip or folder.

    tiny-imagenet-200/wnids.txt                      the class ids (WordNet ids), one per line: label order
    tiny-imagenet-200/words.txt                      "<wnid>\\t<names>" (optional; gives readable names)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class; <wnid>_boxes.txt beside (not used)
    tiny-imagenet-200/val/images/*.JPEG              50 per class, labels in val/val_annotations.txt
    tiny-imagenet-200/test/images/*.JPEG             no labels: skipped, with a note

Written splits: 'train' (official train) and 'test' (official val, the labelled held-out set). Images are
64x64 RGB (grayscale ones are converted); 100k x 64x64x3 uint8 is 1.2 GB, so the tensor format fits on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .archive import SourceTree
from .imagefolder import bad_or_raise, decode_files, is_image_name, skipped_meta
from .errors import BadFile, SourceError
from .registry import Listed, Loaded, ProgressFactory, register_dataset, register_listing
from .tensor_format import Split

EXPECTED_CLASSES = 200


def _lines(tree: SourceTree, name: str) -> list[str]:
    try:
        text = tree.read(name).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{tree.path}:{name}: not UTF-8 text ({e})") from e
    return [line.rstrip("\r") for line in text.splitlines() if line.strip()]


def _class_names(tree: SourceTree, root: str, wnids: list[str]) -> list[str]:
    """Readable names from words.txt ('n01443537\\tgoldfish, Carassius auratus'); the wnid if absent."""
    words_file = f"{root}words.txt"
    if words_file not in tree:
        return list(wnids)
    words = {}
    for line in _lines(tree, words_file):
        wnid, _, text = line.partition("\t")
        words[wnid.strip()] = text.strip()
    return [words.get(w, w) for w in wnids]


@dataclass
class _Listing:
    tree: SourceTree
    root: str  # '' or 'tiny-imagenet-200/'
    wnids: list[str]
    splits: dict[str, tuple[list[str], list[int]]]  # train (official train), test (official val)
    val_boxes: list[list[int] | None]  # per test image, in its order
    bad: list[BadFile]
    notes: list[str]


def _list_files(source: Path | None, skip_bad: bool) -> _Listing:
    if source is None:
        raise SourceError("tinyimagenet: --source PATH is required (tiny-imagenet-200.zip or its unpacked "
                          "folder; download it from http://cs231n.stanford.edu/tiny-imagenet-200.zip)")
    tree = SourceTree(source, skip_bad=skip_bad)
    wnids_file = tree.find("wnids.txt")
    if wnids_file is None:
        raise SourceError(f"{source}: no wnids.txt found; expected the official tiny-imagenet-200 layout")
    root = wnids_file[: -len("wnids.txt")]  # '' or 'tiny-imagenet-200/'
    wnids = [w.strip() for w in _lines(tree, wnids_file)]
    if len(set(wnids)) != len(wnids):
        raise SourceError(f"{source}:{wnids_file}: duplicate class ids")
    index = {w: i for i, w in enumerate(wnids)}
    notes: list[str] = []
    if len(wnids) != EXPECTED_CLASSES:
        notes.append(f"{wnids_file} lists {len(wnids)} classes (the official set has {EXPECTED_CLASSES})")
    bad: list[BadFile] = list(tree.skipped)

    # --- train/<wnid>/images/<file>
    train_names, train_labels = [], []
    prefix = f"{root}train/"
    for name in tree.names:
        if not name.startswith(prefix):
            continue
        parts = PurePosixPath(name[len(prefix):]).parts
        if len(parts) == 2 and parts[1] == f"{parts[0]}_boxes.txt":
            continue  # the official per-class box file
        if len(parts) != 3 or parts[1] != "images":
            bad.append(bad_or_raise(name, "unexpected file in train/ (want train/<wnid>/images/<image>)",
                                    skip_bad, tree.path))
            continue
        if parts[0] not in index:
            raise SourceError(f"{source}: {name}: class folder {parts[0]!r} is not listed in {wnids_file}")
        if not is_image_name(name):
            bad.append(bad_or_raise(name, "not an image file", skip_bad, tree.path))
            continue
        train_names.append(name)
        train_labels.append(index[parts[0]])
    if not train_names:
        raise SourceError(f"{source}: no images under {prefix}<wnid>/images/")

    # --- val/images/<file>, labelled by val/val_annotations.txt ("<file>\t<wnid>\tx0\ty0\tx1\ty1")
    ann_file = f"{root}val/val_annotations.txt"
    if ann_file not in tree:
        raise SourceError(f"{source}: {ann_file} not found; the val split needs its annotations")
    val_names, val_labels, val_boxes = [], [], []
    for lineno, line in enumerate(_lines(tree, ann_file), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise SourceError(f"{source}:{ann_file}:{lineno}: expected '<file>\\t<wnid>\\t...' with a wnid from "
                              f"wnids.txt, got {line!r}")
        name = f"{root}val/images/{fields[0]}"
        if name not in tree:
            raise SourceError(f"{source}: {name} is listed in {ann_file} (line {lineno}) but missing")
        val_names.append(name)
        val_labels.append(index[fields[1]])
        val_boxes.append([int(v) for v in fields[2:6]] if len(fields) >= 6 else None)
    listed = set(val_names)
    for name in tree.names:
        if name.startswith(f"{root}val/") and name != ann_file and name not in listed:
            bad.append(bad_or_raise(name, f"in val/ but not labelled by {ann_file}", skip_bad, tree.path))

    n_test = sum(1 for n in tree.names if n.startswith(f"{root}test/") and is_image_name(n))
    if n_test:
        notes.append(f"the official test split ({n_test} images) has no labels: skipped; 'test' here is the "
                     "official val split")

    # both splits grouped by class (wnids.txt order), then by file name
    order = sorted(range(len(train_names)), key=lambda i: (train_labels[i], train_names[i]))
    train_names, train_labels = [train_names[i] for i in order], [train_labels[i] for i in order]
    order = sorted(range(len(val_names)), key=lambda i: (val_labels[i], val_names[i]))
    val_names, val_labels, val_boxes = ([v[i] for i in order] for v in (val_names, val_labels, val_boxes))
    return _Listing(tree, root, wnids, {"train": (train_names, train_labels), "test": (val_names, val_labels)},
                    val_boxes, bad, notes)


SPLIT_SOURCES = {"train": "official train", "test": "official val (the official test has no labels)"}


@register_dataset("tinyimagenet")
def read_tinyimagenet(
    source: Path | None,
    progress_factory: ProgressFactory | None = None,
    *,
    size: int | None = None,
    skip_bad: bool = False,
) -> Loaded:
    listed = _list_files(source, skip_bad)
    tree, bad, notes = listed.tree, listed.bad, listed.notes

    splits: dict[str, Split] = {}
    kept_val: list[int] = []
    for split, (names, labels) in listed.splits.items():
        images, kept, split_bad = decode_files(tree, names, size=size, skip_bad=skip_bad, label=split,
                                               progress_factory=progress_factory)
        bad.extend(split_bad)
        splits[split] = Split(images, np.asarray(labels, dtype=np.int64)[kept])
        if split == "test":
            kept_val = kept
    if bad:
        notes.append(f"skipped {len(bad)} bad file(s) (--skip-bad); listed in meta.json under 'skipped'")
    extra = {
        **skipped_meta(bad),
        "wnids": listed.wnids,
        "class_names": _class_names(tree, listed.root, listed.wnids),
        "split_sources": SPLIT_SOURCES,
        "test_boxes": [listed.val_boxes[i] for i in kept_val],
        "resize": size,
    }
    return Loaded(splits, list(listed.wnids), source=f"tinyimagenet:{Path(source).resolve()}", extra_meta=extra,
                  notes=notes)


@register_listing("tinyimagenet")
def list_tinyimagenet(source: Path | None, *, skip_bad: bool = False) -> Listed:
    """The jpeg format's view: the original JPEGs (64x64, stored byte for byte; grey ones as RGB)."""
    listed = _list_files(source, skip_bad)

    def meta_for(result) -> dict:
        return {"test_boxes": [listed.val_boxes[i] for i in result.kept["test"].tolist()]}

    splits = {split: list(zip(names, labels)) for split, (names, labels) in listed.splits.items()}
    extra = {**skipped_meta(listed.bad), "wnids": listed.wnids,
             "class_names": _class_names(listed.tree, listed.root, listed.wnids), "split_sources": SPLIT_SOURCES}
    return Listed(splits, list(listed.wnids), source=f"tinyimagenet:{Path(source).resolve()}",
                  read=listed.tree.read, where=str(listed.tree.path), extra_meta=extra, notes=listed.notes,
                  meta_for=meta_for)
