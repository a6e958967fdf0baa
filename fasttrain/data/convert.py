"""`fasttrain convert DATASET`: read a source once, write a training-ready dataset directory.

The one entry point over every reader (registry.READERS: cifar10, cifar100, tinyimagenet, cars196,
imagefolder) and every writer (tensor, ffcv, dali). `outdir.plan_output` decides whether --out may be
written; the writers write atomically (`runio.atomic_directory`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from ..runio import TargetExists, replacing
from .errors import DatasetError, SourceError
from .formats import DEFAULT_TIMEOUT_S, import_optional, write_dali_dataset, write_ffcv_dataset
from .outdir import holds_only_fasttrain_files, plan_output
from .registry import READERS, Loaded, ProgressFactory
from .tensor_format import write_tensor_dataset
from .verify import FORMATS


def default_out_dir(name: str, fmt: str = "tensor") -> Path:
    """./data/<name> for the tensor format, ./data/<name>-<format> for the others."""
    return Path("data") / (name if fmt == "tensor" else f"{name}-{fmt}")


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
    fmt: str = "tensor",
    source: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    jpeg_quality: int | None = None,
    max_resolution: int | None = None,
    timeout_s: float | None = None,
    progress_factory: ProgressFactory | None = None,
    log: Callable[[str], None] = print,
    **options,
) -> Path:
    """Convert `dataset` to format `fmt` at `out` (default `default_out_dir`); returns the directory.

    A complete dataset of the same request at `out` is reused unless `force`; what else may be replaced
    is `outdir.plan_output`'s rule. `options` go to the reader (`read_dataset`): name (imagefolder),
    size, val_fraction, skip_bad. `jpeg_quality`, `max_resolution` and `timeout_s` are the ffcv/dali
    writers' options.
    """
    if dataset not in READERS:
        raise SourceError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    if fmt not in FORMATS:
        raise DatasetError(f"--format: unknown format {fmt!r}; available: {', '.join(FORMATS)}")
    if fmt == "tensor" and (jpeg_quality is not None or max_resolution is not None):
        raise DatasetError("--jpeg-quality/--max-resolution apply to --format ffcv or dali, not tensor")
    if max_resolution is not None and max_resolution < 1:
        raise DatasetError(f"--max-resolution must be >= 1, got {max_resolution}")
    if fmt == "ffcv":
        import_optional("ffcv", "ffcv")  # fail before the (long) read of the source
    name = options.get("name") or dataset
    out_dir = Path(out) if out is not None else default_out_dir(name, fmt)
    source_path = Path(source) if source is not None else None
    given = {k: v for k, v in options.items() if v is not None and v is not False and k != "name"}
    request = {"dataset": dataset, "name": name, "format": fmt,
               "source": str(source_path.resolve()) if source_path is not None else None,
               "options": given or None, "jpeg_quality": jpeg_quality, "max_resolution": max_resolution}
    in_format = "" if fmt == "tensor" else f" in {fmt} format"  # the messages of before, word for word
    if plan_output(out_dir, source=source_path, force=force, request=request, log=log) == "reuse":
        log(f"{out_dir} already holds a complete {dataset} dataset{in_format}; reusing it (--force rebuilds)")
        return out_dir

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
