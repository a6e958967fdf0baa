"""`fasttrain convert DATASET`: read a source once, write a training-ready dataset directory.

The one entry point over every reader (registry.READERS: cifar10, cifar100, tinyimagenet, cars196,
imagefolder) and every writer (tensor, ffcv, dali), and over the listing readers (registry.LISTERS:
imagenet, imagefolder, tinyimagenet, cars196) and the jpeg store, which keeps each image at its own size.
`outdir.plan_output` decides whether --out may be written; the writers write atomically
(`fileio.atomic_directory`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from ..fileio import TargetExists, replacing
from .errors import DatasetError, SourceError
from .formats import DEFAULT_TIMEOUT_S, import_optional, write_dali_dataset, write_ffcv_dataset
from .jpeg_store import DEFAULT_MAX_SIDE, DEFAULT_QUALITY, SHARD_BYTES, write_jpeg_store
from .outdir import holds_only_fasttrain_files, plan_output
from .registry import LISTERS, READERS, Listed, Loaded, ProgressFactory
from .tensor_format import write_tensor_dataset
from .verify import FORMATS


def default_out_dir(name: str, fmt: str = "tensor") -> Path:
    """./data/<name> for the tensor format, ./data/<name>-<format> for the others."""
    return Path("data") / (name if fmt == "tensor" else f"{name}-{fmt}")


def known_datasets() -> list[str]:
    return sorted(set(READERS) | set(LISTERS))


def default_format(dataset: str) -> str:
    """tensor, except for a dataset that has only a listing reader (imagenet): jpeg."""
    return "jpeg" if dataset in LISTERS and dataset not in READERS else "tensor"


def _reader_options(reader: Callable, dataset: str, fmt: str, options: dict) -> dict:
    """The options given (None/False dropped); one the reader does not take is an error naming the CLI
    option (e.g. --size for cifar10)."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    takes = {p.name for p in inspect.signature(reader).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(given) - takes)
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        accepted = ", ".join("--" + k.replace("_", "-") for k in sorted(takes)) or "none"
        with_format = " with --format jpeg" if fmt == "jpeg" else ""
        raise SourceError(f"{opts}: not an option of dataset {dataset!r}{with_format} (its options: {accepted})")
    return given


def read_dataset(
    dataset: str,
    source: str | Path | None,
    progress_factory: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Loaded:
    """Run `dataset`'s reader (options: see `_reader_options`)."""
    if dataset not in READERS:
        raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    reader = READERS[dataset]
    given = _reader_options(reader, dataset, "tensor", options)
    loaded = reader(Path(source) if source is not None else None, progress_factory, **given)
    for note in loaded.notes:
        log(f"note: {note}")
    return loaded


def list_dataset(dataset: str, source: str | Path | None, log: Callable[[str], None] = print, **options) -> Listed:
    """Run `dataset`'s listing reader: its files per split, for the jpeg store."""
    lister = LISTERS[dataset]
    listed = lister(Path(source) if source is not None else None, **_reader_options(lister, dataset, "jpeg", options))
    for note in listed.notes:
        log(f"note: {note}")
    return listed


def convert(
    dataset: str,
    *,
    fmt: str | None = None,
    source: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    jpeg_quality: int | None = None,
    max_resolution: int | None = None,
    timeout_s: float | None = None,
    shard_mib: int | None = None,
    progress_factory: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Path:
    """Convert `dataset` to format `fmt` at `out` (default `default_out_dir`); returns the directory.

    A complete dataset of the same request at `out` is reused unless `force`; what else may be replaced
    is `outdir.plan_output`'s rule. `options` go to the reader (`read_dataset`): name (imagefolder),
    size, val_fraction, skip_bad. `jpeg_quality`, `max_resolution` and `timeout_s` are the ffcv/dali
    writers' options; `jpeg_quality` and `max_resolution` (the longer side's cap, --max-side) also the
    jpeg store's, with `shard_mib`. `fmt` defaults to `default_format(dataset)`.
    """
    if dataset not in READERS and dataset not in LISTERS:
        raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(known_datasets())}")
    fmt = fmt or default_format(dataset)
    if fmt not in FORMATS:
        raise DatasetError(f"--format: unknown format {fmt!r}; available: {', '.join(FORMATS)}")
    if fmt == "jpeg" and dataset not in LISTERS:
        raise DatasetError(f"--format jpeg: not available for {dataset} (its images share one small size: use "
                           f"the tensor format); available for {', '.join(sorted(LISTERS))}")
    if fmt != "jpeg" and dataset not in READERS:
        raise DatasetError(f"--format {fmt}: {dataset} is written only as --format jpeg (its images keep their "
                           "own sizes and are streamed from disk)")
    if fmt != "jpeg" and shard_mib is not None:
        raise DatasetError("--shard-mib applies to --format jpeg only")
    if shard_mib is not None and shard_mib < 1:
        raise DatasetError(f"--shard-mib must be >= 1, got {shard_mib}")
    if fmt == "jpeg" and timeout_s is not None:
        raise DatasetError("--timeout applies to --format ffcv or dali, not jpeg (an interrupted jpeg convert "
                           "continues where it stopped when run again)")
    if fmt == "tensor" and (jpeg_quality is not None or max_resolution is not None):
        raise DatasetError("--jpeg-quality/--max-side apply to --format ffcv, dali or jpeg, not tensor")
    if max_resolution is not None and max_resolution < 1:
        raise DatasetError(f"--max-side must be >= 1, got {max_resolution}")
    if fmt == "ffcv":
        import_optional("ffcv", "ffcv")  # fail before the (long) read of the source
    name = options.get("name") or dataset
    out_dir = Path(out) if out is not None else default_out_dir(name, fmt)
    source_path = Path(source) if source is not None else None
    given = {k: v for k, v in options.items() if v is not None and v is not False and k != "name"}
    request = {"dataset": dataset, "name": name, "format": fmt,
               "source": str(source_path.resolve()) if source_path is not None else None,
               "options": given or None, "jpeg_quality": jpeg_quality, "max_resolution": max_resolution,
               "shard_mib": shard_mib}
    in_format = "" if fmt == "tensor" else f" in {fmt} format"  # the messages of before, word for word
    if plan_output(out_dir, source=source_path, force=force, request=request, log=log) == "reuse":
        log(f"{out_dir} already holds a complete {dataset} dataset{in_format}; reusing it (--force rebuilds)")
        return out_dir
    if source_path is not None and not source_path.exists():
        raise SourceError(f"--source {source}: no such file or directory; give the folder or archive of the "
                          f"{dataset} dataset")

    if fmt == "jpeg":
        return _convert_jpeg(dataset, source, out_dir, dataset_name=name, request=request, jpeg_quality=jpeg_quality,
                             max_side=max_resolution, shard_mib=shard_mib, progress_factory=progress_factory,
                             log=log, **options)
    loaded = read_dataset(dataset, source, progress_factory, log, **options)
    extra = {**loaded.extra_meta, "request": request}
    common = {"name": name, "source": loaded.source, "extra_meta": extra}
    options_of = {"ffcv": {"jpeg_quality": jpeg_quality, "max_resolution": max_resolution,
                           "timeout_s": timeout_s or DEFAULT_TIMEOUT_S},
                  "dali": {"jpeg_quality": jpeg_quality, "max_resolution": max_resolution,
                           "timeout_s": timeout_s or DEFAULT_TIMEOUT_S, "progress_factory": progress_factory},
                  "tensor": {}}
    writer = {"tensor": write_tensor_dataset, "ffcv": write_ffcv_dataset, "dali": write_dali_dataset}[fmt]
    try:
        with replacing(out_dir, holds_only_fasttrain_files):
            writer(out_dir, loaded.splits, loaded.classes, **common, **options_of[fmt])
    except TargetExists as e:
        moved = f" (it was moved to {e.moved_to}: move it back)" if e.moved_to else ""
        raise DatasetError(f"--out {out_dir}: appeared or changed while the dataset was written and holds files "
                           f"fasttrain did not write{moved}; they were left untouched and the new dataset was "
                           "discarded: choose a new --out, or move that folder away and convert again") from e
    except OSError as e:
        raise DatasetError(f"--out {out_dir}: cannot write the dataset ({e.strerror or e}); nothing was left "
                           "behind: free space or choose another --out") from e
    counts = ", ".join(f"{k} {len(v.labels)}" for k, v in loaded.splits.items())
    log(f"wrote {out_dir} ({'' if fmt == 'tensor' else fmt + '; '}{counts}; {len(loaded.classes)} classes)")
    return out_dir


def _convert_jpeg(dataset: str, source: str | Path | None, out_dir: Path, *, dataset_name: str, request: dict,
                  jpeg_quality: int | None, max_side: int | None, shard_mib: int | None,
                  progress_factory: ProgressFactory | None, log: Callable[[str], None], **options) -> Path:
    listed = list_dataset(dataset, source, log, **options)
    try:
        with replacing(out_dir, holds_only_fasttrain_files):
            result = write_jpeg_store(
                out_dir, listed.splits, listed.classes, name=dataset_name, source=listed.source,
                max_side=max_side or DEFAULT_MAX_SIDE, quality=jpeg_quality or DEFAULT_QUALITY,
                shard_bytes=(shard_mib << 20) if shard_mib else SHARD_BYTES,
                skip_bad=bool(options.get("skip_bad")), read=listed.read, where=listed.where,
                progress_factory=progress_factory, extra_meta={**listed.extra_meta, "request": request},
                meta_for=listed.meta_for, log=log)
    except TargetExists as e:
        raise DatasetError(f"--out {out_dir}: appeared or changed while the dataset was written and holds files "
                           "fasttrain did not write; they were left untouched; the finished shards are kept beside "
                           "it: move that folder away and run the same command again to continue") from e
    except OSError as e:
        raise DatasetError(f"--out {out_dir}: cannot write the dataset ({e.strerror or e}); the shards finished so "
                           "far are kept beside it: free space and run the same command again to continue") from e
    if result.skipped:
        log(f"note: skipped {len(result.skipped)} bad file(s) (--skip-bad); listed in meta.json under 'skipped'")
    counts = ", ".join(f"{k} {len(v)}" for k, v in result.kept.items())
    copied, total = sum(result.copied.values()), sum(len(v) for v in result.kept.values())
    log(f"wrote {out_dir} (jpeg; {counts}; {len(listed.classes)} classes; {copied} of {total} images stored byte "
        f"for byte, the others encoded once)")
    return out_dir
