"""Trained weights as a starting point (`fasttrain run MODEL --init-from CHECKPOINT|RUN_DIR`), and a
checkpoint's model config checked against its own weights before any memory is allocated.

`--init-from` takes weights only (the EMA weights when the checkpoint has them, as `fasttrain eval` does):
optimiser state, schedule position and history start fresh, so this is fine-tuning or a new schedule, not a
resume. It is strict about the architecture: every parameter and buffer must exist on both sides with the
same shape, except the classifier head when the class count differs, which keeps its fresh initialisation
(the log says so). Anything else names the first differing entry.

`check_model_config` builds the model a checkpoint describes on PyTorch's meta device (shapes only, no
memory) and compares it with the weights the checkpoint carries, so a config edited to `width=200` is
refused in milliseconds instead of allocating gigabytes first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .checkpoint import CHECKPOINT_NAME, CheckpointError, load
from .models import create_model


def checkpoint_path(source: str | Path, option: str = "--init-from") -> Path:
    """A checkpoint file, or a run folder's checkpoint.pt."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise CheckpointError(f"{option} {source}: no {CHECKPOINT_NAME} in this folder; pass a run folder "
                                  f"that saved one, or a checkpoint file")
    elif not path.is_file():
        raise CheckpointError(f"{option} {source}: no such file or folder; pass a checkpoint.pt or a run folder")
    return path


def check_model_config(name: str, num_classes: int, model_kwargs: dict, state: dict, source: str | Path) -> None:
    """Raises CheckpointError when the model `name(num_classes, **model_kwargs)` would not hold `state`
    (checked on the meta device: no memory is allocated, however large the config asks the model to be)."""
    with torch.device("meta"):
        shapes = _shapes(create_model(name, num_classes, **model_kwargs).state_dict())
    problem = _first_difference(shapes, _shapes(state), head=set())
    if problem:
        raise CheckpointError(
            f"{source}: its weights do not fit {name} with {num_classes} classes and "
            f"{model_kwargs or 'no model options'}: its config does not describe the weights it holds "
            f"({problem}); the file was edited or damaged")


def load_init_weights(model: nn.Module, source: str | Path, num_classes: int,
                      log: Callable[[str], None] | None = None) -> None:
    """Copies the weights of `source` into `model`; a head of another class count keeps its initialisation."""
    path = checkpoint_path(source)
    ckpt = load(path)
    use_ema = isinstance(ckpt.get("model_ema"), dict) and bool(ckpt["model_ema"])
    state = ckpt["model_ema"] if use_ema else ckpt["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--init-from {path}: its 'model' entry is not a state dict")
    own, theirs = _shapes(model.state_dict()), _shapes(state)
    classes = ckpt.get("classes")
    head = _head_keys(own, theirs, num_classes, len(classes)) if isinstance(classes, list) else set()
    problem = _first_difference(own, theirs, head=head)
    if problem:
        saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        raise CheckpointError(
            f"--init-from {path}: the weights do not fit this model ({problem}); they come from model "
            f"{saved.get('model', '?')} with {saved.get('model_kwargs') or 'no model options'}: pass the same "
            f"model and model options")
    model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if log is not None:
        note = ""
        if head:
            old = theirs[next(iter(head))][0]
            note = f"; head re-initialised for {num_classes} classes (was {old}): {', '.join(sorted(head))}"
        log(f"initial weights: {path} ({'EMA' if use_ema else 'model'} weights){note}")


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}


def _head_keys(own: dict, theirs: dict, num_classes: int, saved_classes: int) -> set[str]:
    """Entries whose first dimension is the class count, here and in the checkpoint (which differ), the rest
    of the shape equal: the classifier's weight and bias."""
    if num_classes == saved_classes:
        return set()
    return {k for k, shape in own.items() if k in theirs and shape[:1] == (num_classes,)
            and theirs[k][:1] == (saved_classes,) and theirs[k][1:] == shape[1:]}


def _first_difference(own: dict, theirs: dict, *, head: set[str]) -> str | None:
    missing = sorted(set(own) - set(theirs))
    extra = sorted(set(theirs) - set(own))
    if missing:
        return f"{len(missing)} entries missing from the checkpoint, e.g. {missing[0]}"
    if extra:
        return f"{len(extra)} entries the model does not have, e.g. {extra[0]}"
    for k, shape in own.items():
        if k not in head and theirs[k] != shape:
            return f"{k}: checkpoint {list(theirs[k])}, model {list(shape)}"
    return None
