"""`fasttrain convert cars196 --source PATH`: Stanford Cars (16,185 images, 196 classes), for retrieval.

Source layouts (folder, zip or tar; nested archives such as `car_ims.tgz` are read in place):

    cars_annos.mat + car_ims/*.jpg        the all-in-one release: annotations(relative_im_path, bbox_x1,
                                          bbox_y1, bbox_x2, bbox_y2, class, test) and class_names
    devkit/cars_meta.mat                  the devkit release: class_names;
    devkit/cars_train_annos.mat           annotations(bbox_x1..bbox_y2, class, fname) for cars_train/;
    cars_test_annos_withlabels.mat        the same for cars_test/ (the devkit's cars_test_annos.mat has
    cars_train/*.jpg  cars_test/*.jpg     no labels, so the *_withlabels file is required)

Written splits follow the retrieval protocol (the Cars196 retrieval task; Song et al. 2016): 'train' holds every image
of classes 1-98 (labels 0-97), 'test' every image of classes 99-196 (labels 98-195), whatever their
official classification split. meta.json records the split ("retrieval_split") and, per image, the source
file, the bounding box in original pixel coordinates (x1, y1, x2, y2, 1-based as in the .mat files), the
original (width, height) and the official train/test flag; `box_in_image` maps a box into the stored image.

Images are resized so the short side is `size` (default 224) and centre-cropped to size x size for the
tensor format (the array-based ffcv/dali writers re-encode these crops as JPEG). `--format jpeg` keeps the
original photos instead (`list_cars196`: shrunk only when the longer side exceeds --max-side), with the
same splits and per-image records.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .archive import SourceTree
from .imagefolder import decode_files, skipped_meta
from .errors import SourceError
from .registry import Listed, Loaded, ProgressFactory, register_dataset, register_listing
from .tensor_format import Split

DEFAULT_SIZE = 224
OFFICIAL_CLASSES = 196


@dataclass
class CarRecord:
    file: str  # path inside the source
    label: int  # 0-based class
    box: list[int]  # x1, y1, x2, y2 (original pixels, as in the .mat)
    official_test: bool


def _loadmat(tree: SourceTree, name: str) -> dict:
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError("reading Stanford Cars .mat annotations needs scipy: pip install 'fasttrain[cars]'") from e
    stream = io.BytesIO(tree.read(name))
    try:
        major, _ = scipy.io.matlab.matfile_version(stream)
        if major == 2:  # MATLAB 7.3 files are HDF5, which loadmat cannot read
            raise SourceError(f"{tree.path}:{name}: a MATLAB 7.3 (HDF5) file; the official Stanford Cars "
                              "annotations are MATLAB 5 files: use the original devkit / cars_annos.mat")
        stream.seek(0)
        return scipy.io.loadmat(stream, squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, OSError, scipy.io.matlab.MatReadError) as e:
        raise SourceError(f"{tree.path}:{name}: not a readable MATLAB file ({type(e).__name__}: {e})") from e


def _field(rec, name: str, mat: str):
    try:
        return getattr(rec, name)
    except AttributeError:
        raise SourceError(f"{mat}: annotation has no field {name!r} (fields: {getattr(rec, '_fieldnames', '?')})")


def _whole(rec, name: str, mat: str) -> int:
    """An integer field of one annotation; NaN, inf, fractions and text are named, not a ValueError."""
    value = _field(rec, name, mat)
    value = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
    number = value if isinstance(value, (int, float, np.integer, np.floating)) else None
    if number is None or isinstance(number, (bool, np.bool_)) or not np.isfinite(number) or number != int(number):
        raise SourceError(f"{mat}: an annotation's {name} is {value!r}, expected a whole number; the annotation "
                          f"file is damaged or was edited: use the original Stanford Cars file")
    return int(number)


def _box(rec, mat: str) -> list[int]:
    return [_whole(rec, k, mat) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]


def _class_names(mat: dict, name: str) -> list[str]:
    if "class_names" not in mat:
        raise SourceError(f"{name}: no 'class_names' variable")
    return [str(c).strip() for c in np.atleast_1d(mat["class_names"])]


def _annotations(mat: dict, name: str) -> np.ndarray:
    if "annotations" not in mat:
        raise SourceError(f"{name}: no 'annotations' variable")
    return np.atleast_1d(mat["annotations"])


def _dir_of(name: str) -> str:
    parent = PurePosixPath(name).parent.as_posix()
    return "" if parent == "." else parent + "/"


def _read_annos_release(tree: SourceTree, mat_name: str) -> tuple[list[CarRecord], list[str]]:
    mat = _loadmat(tree, mat_name)
    classes = _class_names(mat, mat_name)
    root = _dir_of(mat_name)
    records = []
    where = f"{tree.path}:{mat_name}"  # the archive (or folder) and the member
    for rec in _annotations(mat, mat_name):
        path = str(_field(rec, "relative_im_path", where)).strip()
        records.append(CarRecord(root + path, _whole(rec, "class", where) - 1, _box(rec, where),
                                 bool(_whole(rec, "test", where))))
    return records, classes


def _read_devkit_release(tree: SourceTree, meta_name: str) -> tuple[list[CarRecord], list[str]]:
    classes = _class_names(_loadmat(tree, meta_name), meta_name)
    train_mat = tree.find("cars_train_annos.mat")
    test_mat = tree.find("cars_test_annos_withlabels.mat")
    if train_mat is None:
        raise SourceError(f"{tree.path}: found {meta_name} but no cars_train_annos.mat (devkit layout)")
    if test_mat is None:
        raise SourceError(f"{tree.path}: no cars_test_annos_withlabels.mat: the devkit's cars_test_annos.mat has "
                          "no labels; put the *_withlabels file beside it (or use cars_annos.mat + car_ims/)")
    # "<folder>/<file>" -> full name, shallowest first (one pass: a find() per image would be quadratic)
    by_tail: dict[str, str] = {}
    for name in sorted(tree.names, key=lambda n: (n.count("/"), n)):
        by_tail.setdefault("/".join(PurePosixPath(name).parts[-2:]), name)
    records = []
    for mat_name, folder, is_test in ((train_mat, "cars_train", False), (test_mat, "cars_test", True)):
        for rec in _annotations(_loadmat(tree, mat_name), mat_name):
            fname = str(_field(rec, "fname", mat_name)).strip()
            path = by_tail.get(f"{folder}/{fname}")
            if path is None:
                raise SourceError(f"{tree.path}: {folder}/{fname} (listed in {mat_name}) not found")
            where = f"{tree.path}:{mat_name}"
            records.append(CarRecord(path, _whole(rec, "class", where) - 1, _box(rec, where), is_test))
    return records, classes


def _image_size(data: bytes) -> list[int]:
    with Image.open(io.BytesIO(data)) as img:
        return list(img.size)


def box_in_image(box: list[int], original_size: list[int], size: int) -> list[float]:
    """Map an original-pixel box (x1, y1, x2, y2) into the stored size x size image, following
    `decode.decode_image`'s resize (short side to `size`) and centre crop; clipped to the image."""
    w, h = original_size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    sx, sy = rw / w, rh / h
    x1, y1, x2, y2 = box
    out = [(x1 - 1) * sx - left, (y1 - 1) * sy - top, x2 * sx - left, y2 * sy - top]
    return [min(max(v, 0.0), float(size)) for v in out]


@register_dataset("cars196")
def read_cars196(
    source: Path | None,
    progress_factory: ProgressFactory | None = None,
    *,
    size: int | None = None,
    skip_bad: bool = False,
) -> Loaded:
    size = DEFAULT_SIZE if size is None else size
    if size < 1:
        raise SourceError(f"--size must be >= 1, got {size}")
    tree, records, classes, notes = _list_records(source, skip_bad)
    n_train_classes = len(classes) // 2
    train_classes, test_classes = list(range(n_train_classes)), list(range(n_train_classes, len(classes)))

    splits: dict[str, Split] = {}
    per_image: dict[str, dict] = {}
    bad_all = list(tree.skipped)
    for split, recs in _retrieval_splits(records, len(classes)).items():
        images, kept, bad = decode_files(tree, [r.file for r in recs], size=size, skip_bad=skip_bad, label=split,
                                         progress_factory=progress_factory)
        bad_all.extend(bad)
        recs = [recs[i] for i in kept]
        splits[split] = Split(images, np.asarray([r.label for r in recs], dtype=np.int64))
        per_image[split] = {
            "files": [r.file for r in recs],
            "boxes": [r.box for r in recs],
            "original_size": [_image_size(tree.read(r.file)) for r in recs],
            "official_test": [r.official_test for r in recs],
        }
    if bad_all:
        notes.append(f"skipped {len(bad_all)} bad file(s) (--skip-bad); listed in meta.json under 'skipped'")
    extra = {
        **skipped_meta(bad_all),
        "retrieval_split": {"train_classes": train_classes, "test_classes": test_classes},
        "resize": {"short_side": size, "center_crop": size},
        "images": per_image,
    }
    return Loaded(splits, classes, source=f"cars196:{Path(source).resolve()}", extra_meta=extra, notes=notes)


def _retrieval_splits(records: list[CarRecord], n_classes: int) -> dict[str, list[CarRecord]]:
    """The retrieval protocol: the first half of the classes in 'train', the rest in 'test', each split by
    class then file."""
    half = n_classes // 2
    return {split: sorted((r for r in records if (r.label < half) == (split == "train")),
                          key=lambda r: (r.label, r.file)) for split in ("train", "test")}


def _list_records(source: Path | None, skip_bad: bool) -> tuple[SourceTree, list[CarRecord], list[str], list[str]]:
    """(source tree, one record per annotated image, class names, notes) of either release."""
    if source is None:
        raise SourceError("cars196: --source PATH is required (a folder or archive with cars_annos.mat and "
                          "car_ims/, or the devkit layout)")
    tree = SourceTree(source, skip_bad=skip_bad)
    annos = tree.find("cars_annos.mat")
    meta_mat = tree.find("cars_meta.mat")
    if annos is not None:
        records, classes = _read_annos_release(tree, annos)
    elif meta_mat is not None:
        records, classes = _read_devkit_release(tree, meta_mat)
    else:
        raise SourceError(f"{source}: neither cars_annos.mat nor devkit/cars_meta.mat found; expected the "
                          "Stanford Cars layout")
    for r in records:
        if not 0 <= r.label < len(classes):
            raise SourceError(f"{source}: {r.file} has class {r.label + 1}, outside 1..{len(classes)}")
        if r.file not in tree:
            raise SourceError(f"{source}: {r.file} is listed in the annotations but missing")
    notes = []
    if len(classes) != OFFICIAL_CLASSES:
        notes.append(f"{len(classes)} classes (the official set has {OFFICIAL_CLASSES}); the retrieval split "
                     "still puts the first half in train")
    return tree, records, classes, notes


@register_listing("cars196")
def list_cars196(source: Path | None, *, skip_bad: bool = False) -> Listed:
    """The jpeg format's view: the original photos (shrunk only over --max-side), same splits and records as
    `read_cars196`; boxes stay in original pixels, and "original_size" with the index's stored size maps
    them (scale by stored / original: the whole photo is kept, nothing is cropped)."""
    tree, records, classes, notes = _list_records(source, skip_bad)
    recs = _retrieval_splits(records, len(classes))

    def meta_for(result) -> dict:
        images = {}
        for split, kept in result.kept.items():
            chosen = [recs[split][i] for i in kept.tolist()]
            images[split] = {"files": [r.file for r in chosen], "boxes": [r.box for r in chosen],
                             "original_size": result.source_sizes[split][:, ::-1].tolist(),  # (width, height)
                             "official_test": [r.official_test for r in chosen]}
        return {"images": images}

    half = len(classes) // 2
    extra = {**skipped_meta(tree.skipped),
             "retrieval_split": {"train_classes": list(range(half)), "test_classes": list(range(half, len(classes)))}}
    return Listed({split: [(r.file, r.label) for r in rs] for split, rs in recs.items()}, classes,
                  source=f"cars196:{Path(source).resolve()}", read=tree.read, where=str(tree.path), extra_meta=extra,
                  notes=notes, meta_for=meta_for)
