"""`fasttrain convert imagenet --source DIR`: ILSVRC-2012 (ImageNet-1k), written as a jpeg store.

Source: the unpacked folder (the raw tarballs hold one tar per class: unpack them first). The folder whose
`train/` holds the class folders is the root, so both a plain layout and Kaggle's `ILSVRC/Data/CLS-LOC/`
are found:

    train/<wnid>/*.JPEG                 one folder per class (wnid: a WordNet id such as n01440764);
                                        labels follow the sorted wnids (the usual ImageNet class order)
    val/<wnid>/*.JPEG                   val sorted into class folders (e.g. by the common valprep script), or
    val/*.JPEG + LOC_val_solution.csv   flat val, labelled by Kaggle's CSV ("ImageId,PredictionString",
                                        the first wnid of the prediction string), found anywhere in the source
    LOC_synset_mapping.txt              optional, anywhere in the source: "<wnid> <names>" per line, the
                                        readable class names
    test/                               no labels: skipped, with a note

Written splits: 'train' and 'test' (the official val, the labelled held-out set, as for Tiny ImageNet).
ImageNet's few PNG and CMYK files in JPEG clothing are detected by content and encoded once as RGB JPEG.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .archive import SourceTree
from .errors import BadFile, SourceError
from .imagefolder import bad_or_raise, is_image_name, skipped_meta
from .registry import Listed, register_listing

EXPECTED_CLASSES = 1000
_TRAIN_FILE = re.compile(r"^((?:[^/]+/)*?)train/(n\d{8})/[^/]+$")
_WNID = re.compile(r"^n\d{8}$")
VAL_CSV = "LOC_val_solution.csv"
SYNSETS = "LOC_synset_mapping.txt"


def _text_lines(tree: SourceTree, name: str) -> list[str]:
    try:
        text = tree.read(name).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{tree.path}/{name}: not UTF-8 text ({e})") from e
    return [line.rstrip("\r") for line in text.splitlines() if line.strip()]


def _find_root(tree: SourceTree, source: Path) -> str:
    roots = sorted({m.group(1) for n in tree.names if (m := _TRAIN_FILE.match(n))})
    if not roots:
        packed = [n for n in tree.names if n.lower().startswith("ilsvrc") and n.lower().endswith(".tar")]
        hint = (f" (found {packed[0]}: unpack it first; its train tarball holds one tar per class)" if packed
                else "")
        raise SourceError(f"{source}: no train/<wnid>/<image> files found; expected the unpacked ILSVRC-2012 "
                          f"layout (train/n01440764/*.JPEG ..., val/){hint}")
    if len(roots) > 1:
        shown = ", ".join(r or "./" for r in roots[:3])
        raise SourceError(f"{source}: ILSVRC train/ folders in {len(roots)} places ({shown}); give the folder "
                          "that holds one of them as --source")
    return roots[0]


def _class_names(tree: SourceTree, wnids: list[str]) -> list[str]:
    """Readable names from LOC_synset_mapping.txt when present, else the wnids."""
    mapping_file = tree.find(SYNSETS)
    if mapping_file is None:
        return list(wnids)
    names = {}
    for lineno, line in enumerate(_text_lines(tree, mapping_file), 1):
        wnid, _, text = line.partition(" ")
        if not _WNID.match(wnid):
            raise SourceError(f"{tree.path}/{mapping_file}:{lineno}: expected '<wnid> <names>', got {line!r}")
        names[wnid] = text.strip()
    missing = [w for w in wnids if w not in names]
    if missing:
        raise SourceError(f"{tree.path}/{mapping_file}: train class folders {missing[:3]} are not listed in it "
                          f"({len(missing)} missing); is it the mapping of this dataset?")
    return [names[w] for w in wnids]


def _val_labels_from_csv(tree: SourceTree, index: dict[str, int]) -> tuple[dict[str, int], str]:
    csv_file = tree.find(VAL_CSV)
    if csv_file is None:
        raise SourceError(f"{tree.path}: val/ holds images directly but no {VAL_CSV} labels them; put Kaggle's "
                          f"{VAL_CSV} in the source, or sort val into val/<wnid>/ folders")
    lines = _text_lines(tree, csv_file)
    if not lines or not lines[0].startswith("ImageId"):
        raise SourceError(f"{tree.path}/{csv_file}: expected the header 'ImageId,PredictionString'")
    labels = {}
    for lineno, line in enumerate(lines[1:], 2):
        image_id, _, prediction = line.partition(",")
        wnid = prediction.split()[0] if prediction.split() else ""
        if wnid not in index:
            raise SourceError(f"{tree.path}/{csv_file}:{lineno}: expected '<image id>,<wnid> <box> ...' with a wnid "
                              f"of a train class folder, got {line!r}")
        labels[image_id.strip()] = index[wnid]
    return labels, csv_file


@register_listing("imagenet")
def list_imagenet(source: Path | None, *, skip_bad: bool = False) -> Listed:
    if source is None:
        raise SourceError("imagenet: --source DIR is required (the unpacked ILSVRC-2012 folder: train/<wnid>/*.JPEG "
                          "and val/)")
    source = Path(source)
    if source.is_file():
        raise SourceError(f"{source}: give the unpacked ILSVRC-2012 folder (train/<wnid>/*.JPEG, val/), not an "
                          "archive (the train tarball holds one tar per class: unpack those too)")
    tree = SourceTree(source, skip_bad=skip_bad)
    root = _find_root(tree, source)
    bad: list[BadFile] = list(tree.skipped)
    notes: list[str] = []

    train: list[tuple[str, str]] = []  # (file, wnid)
    val: list[tuple[str, list[str]]] = []  # (file, path parts under val/)
    n_test = 0
    for name in tree.names:
        if not name.startswith(root):
            continue
        parts = PurePosixPath(name[len(root):]).parts
        if parts[0] == "train":
            if len(parts) != 3 or not _WNID.match(parts[1]) or not is_image_name(name):
                bad.append(bad_or_raise(name, "unexpected file in train/ (want train/<wnid>/<image>)", skip_bad,
                                        tree.path))
            else:
                train.append((name, parts[1]))
        elif parts[0] == "val":
            if not is_image_name(name):
                bad.append(bad_or_raise(name, "not an image file in val/", skip_bad, tree.path))
            else:
                val.append((name, list(parts[1:])))
        elif parts[0] == "test":
            n_test += is_image_name(name)
    wnids = sorted({w for _, w in train})
    index = {w: i for i, w in enumerate(wnids)}
    if len(wnids) != EXPECTED_CLASSES:
        notes.append(f"{len(wnids)} class folders in {root}train/ (ILSVRC-2012 has {EXPECTED_CLASSES})")
    if not val:
        raise SourceError(f"{source}: no images in {root}val/; the labelled val split is the test set a run "
                          "evaluates: give the whole source")

    test: list[tuple[str, int]] = []
    if all(len(p) == 2 for _, p in val):  # val/<wnid>/<image>
        for name, p in val:
            if p[0] not in index:
                raise SourceError(f"{source}: {name}: val class folder {p[0]!r} has no train folder")
            test.append((name, index[p[0]]))
        split_source = "the official val (val/<wnid>/ folders)"
    elif all(len(p) == 1 for _, p in val):  # val/<image> + LOC_val_solution.csv
        labels, csv_file = _val_labels_from_csv(tree, index)
        listed = set()
        for name, p in val:
            image_id = PurePosixPath(p[0]).stem
            if image_id not in labels:
                bad.append(bad_or_raise(name, f"in val/ but not labelled by {csv_file}", skip_bad, tree.path))
                continue
            listed.add(image_id)
            test.append((name, labels[image_id]))
        missing = sorted(set(labels) - listed)
        if missing:
            raise SourceError(f"{source}: {missing[0]} is labelled in {csv_file} but not in {root}val/ "
                              f"({len(missing)} such images); the val folder is incomplete")
        split_source = f"the official val (val/, labelled by {csv_file})"
    else:
        raise SourceError(f"{source}: {root}val/ mixes images and class folders; want val/<wnid>/<image> or "
                          f"val/<image> with {VAL_CSV}")
    if n_test:
        notes.append(f"the official test split ({n_test} images) has no labels: skipped; 'test' here is the "
                     "official val split")
    class_names = _class_names(tree, wnids)
    splits = {"train": sorted(((n, index[w]) for n, w in train), key=lambda t: (t[1], t[0])),
              "test": sorted(test, key=lambda t: (t[1], t[0]))}
    extra = {**skipped_meta(bad), "wnids": wnids, "class_names": class_names,
             "split_sources": {"train": "the official train", "test": split_source}}
    return Listed(splits, wnids, source=f"imagenet:{source.resolve()}", read=tree.read, where=str(tree.path),
                  extra_meta=extra, notes=notes)
