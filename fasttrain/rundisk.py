"""Can the run folder take the run's files: created, written and fsynced, and room on its disk for the
checkpoints, checked before loading data or building the model (`RunDirError` otherwise)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


class RunDirError(RuntimeError):
    """The run directory cannot be created or written, or its disk is too full; raised before training."""


PROBE_BYTES = 1 << 20


def check_run_dir(run_dir: str | Path, *, need_bytes: int = 0, option: str = "--out") -> Path:
    """Creates `run_dir` and proves it writable (write + fsync + delete a 1 MiB probe); with `need_bytes`,
    also that its filesystem has that much free space. Raises RunDirError naming the option and path.
    (A permission check alone is not enough: root passes os.access on a read-only mount.)"""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path}: exists and is not a directory; pass a directory for the run")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"{option} {path}: cannot create the run directory ({e.strerror or e}); "
            f"choose a writable location"
        ) from None
    probe = path / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(
            f"{option} {path}: the run directory is not writable ({e.strerror or e}); "
            f"fix its permissions or free space, or choose another --out"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    if need_bytes:
        check_free_space(path, need_bytes, option=option)
    return path


def check_free_space(run_dir: str | Path, need_bytes: int, *, option: str = "--out") -> None:
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise RunDirError(
            f"{option} {run_dir}: only {_human(free)} free on its disk, the run needs about "
            f"{_human(need_bytes)} (a checkpoint is written beside the previous one, plus logs); "
            f"free some space or choose another --out"
        )


def checkpoint_bytes(*modules_or_tensors) -> int:
    """Rough size of one checkpoint: every tensor of the given state dicts / modules, in bytes."""
    total = 0
    for obj in modules_or_tensors:
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, torch.optim.Optimizer):
            obj = obj.state_dict()["state"]
        total += _tensor_bytes(obj)
    return total


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def disk_need(ckpt_bytes: int) -> int:
    """Free space a run needs: the new checkpoint is written while the old one still exists, plus slack
    for metrics, plots and the summary."""
    return 2 * ckpt_bytes + (16 << 20)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
