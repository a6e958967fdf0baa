"""Trained weights as a starting point (`fasttrain run MODEL --init-from SOURCE`), and a checkpoint's model
config checked against its own weights before any memory is allocated.

SOURCE is a fasttrain run folder or checkpoint, a safetensors file, a torch state dict, or a timm /
torchvision checkpoint (fasttrain.weight_files reads them; no code in a file runs). `--init-from` takes
weights only (a fasttrain run's EMA weights when it kept them, as `fasttrain eval` does): optimiser state,
schedule position and history start fresh, so this is fine-tuning or a new schedule, not a resume.

It is strict about the architecture: every parameter and buffer of the model gets a tensor of the same shape,
except the classifier head when the class count differs, which keeps its fresh initialisation (the log says
so). Tensors are matched by name (after dropping a wrapper's prefix such as DDP's `module.`); weights saved
from another library's copy of the same network, whose names differ (torchvision's ResNet-18 for the zoo's
`resnet18` with stem=imagenet: `layer1.0.downsample` there, `stages.0.0.shortcut` here), are matched by their
order, as timm's `remap` does, only when the two have the same number of tensors and every shape agrees. A
timm model saved by timm (or torchvision's ResNets, which timm's copy names alike) matches by name. Anything
else names the first differing entry.

`check_model_config` builds the model a checkpoint describes on PyTorch's meta device (shapes only, no
memory) and compares it with the weights the checkpoint carries, so a config edited to `width=200` is
refused in milliseconds instead of allocating gigabytes first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .checkpoint import CheckpointError
from .models import create_model
from .weight_files import WeightFile, read_weights

# a wrapper's prefix on every key: DistributedDataParallel, torch.compile, Lightning, fasttrain's Classifier
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


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
    weights = read_weights(source)
    path, own = weights.path, _shapes(model.state_dict())
    state = _strip_wrapper(weights.state, own)
    theirs = _shapes(state)
    pairs = [(k, k) for k in own if k in theirs]  # by name
    head = _head_keys(own, theirs, pairs, num_classes)
    problem = _first_difference(own, theirs, head=head)
    by_order = False
    if problem and not weights.fasttrain:  # another library's names for the same network?
        order_pairs = list(zip(own, theirs))
        order_head = _head_keys(own, theirs, order_pairs, num_classes)
        if len(own) == len(theirs) and all(own[a] == theirs[b] or a in order_head for a, b in order_pairs):
            pairs, head, problem, by_order = order_pairs, order_head, None, True
    if problem:
        raise CheckpointError(f"--init-from {path}: the weights do not fit this model ({problem}); "
                              f"{_origin_hint(weights)}")
    model.load_state_dict({a: state[b] for a, b in pairs if a not in head}, strict=False)
    if log is None:
        return
    what = f"{weights.entry} weights" if weights.fasttrain else weights.kind + (f" '{weights.entry}'" if weights.entry
                                                                                else "")
    if by_order:
        renamed = next(((b, a) for a, b in pairs if a != b), None)
        what += f"; {len(pairs)} tensors matched by order" + (f", e.g. {renamed[0]} -> {renamed[1]}" if renamed else "")
    note = ""
    if head:
        old = theirs[dict(pairs)[next(iter(sorted(head)))]][0]
        note = f"; head re-initialised for {num_classes} classes (was {old}): {', '.join(sorted(head))}"
    log(f"initial weights: {path} ({what}){note}")


def _origin_hint(weights: WeightFile) -> str:
    if weights.fasttrain:
        saved = weights.config
        return (f"they come from model {saved.get('model', '?')} with {saved.get('model_kwargs') or 'no model options'}: "
                f"pass the same model and model options")
    return ("nor do they by order (names aside, the shapes differ); pass the model they were saved from, with the "
            "same options: a timm model as timm/<name>, torchvision's ResNets as timm/<name> or the zoo's "
            "resnet18 / resnet50 with --set model_kwargs.stem=imagenet")


def _strip_wrapper(state: dict, own: dict) -> dict:
    """Drops a wrapper's prefix that every key of `state` has and the model's own names do not (repeatedly:
    `module._orig_mod.` from DDP around torch.compile)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
            return _strip_wrapper({k[len(prefix):]: v for k, v in state.items()}, own)
    return state


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}


def _head_keys(own: dict, theirs: dict, pairs: list[tuple[str, str]], num_classes: int) -> set[str]:
    """The model's entries paired with a tensor that differs only in its first dimension, which is the class
    count here and one other count there: the classifier's weight and bias."""
    head = {a: theirs[b][0] for a, b in pairs if own[a] != theirs[b] and own[a][:1] == (num_classes,)
            and theirs[b][:1] and own[a][1:] == theirs[b][1:]}
    return set(head) if len(set(head.values())) == 1 else set()


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
