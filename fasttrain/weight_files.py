"""Weights from a file someone else wrote: a fasttrain run folder or checkpoint, a safetensors file, a torch
state dict, a timm or torchvision checkpoint. `read_weights` gives the tensors as one flat state dict, with
where they came from, so that `fasttrain.init_weights` can match them to a model.

No code in a file runs: torch files are read with `torch.load(weights_only=True)` (checkpoint.read_torch_file)
and safetensors files hold tensors only. The containers other tools write are unwrapped:
  - fasttrain checkpoints: the EMA weights when the run kept them (as `fasttrain eval` uses), else `model`;
  - timm's training script: `state_dict_ema`, else `state_dict`; Lightning and others: `state_dict`,
    `model_state_dict`, `model`.
A wrapper's key prefix (`module.` from DistributedDataParallel, ...) is the matcher's to drop, since only it
knows the model's own names (fasttrain.init_weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, FORMAT, CheckpointError, read_torch_file

# nested state dicts, in the order they are preferred (an EMA first, as timm's load_checkpoint does)
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model_state_dict", "model")


@dataclass
class WeightFile:
    """A flat {name: tensor} state dict and its provenance: `kind` says what the file was, `entry` which of its
    state dicts was used; a fasttrain checkpoint also gives its run's config and class names."""

    state: dict[str, torch.Tensor]
    path: Path
    kind: str
    entry: str = ""
    config: dict = field(default_factory=dict)
    classes: list | None = None

    @property
    def fasttrain(self) -> bool:
        return self.kind == "fasttrain checkpoint"


def weights_path(source: str | Path, option: str = "--init-from") -> Path:
    """A weight file, or a run folder's checkpoint.pt."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise CheckpointError(f"{option} {source}: no {CHECKPOINT_NAME} in this folder; pass a run folder "
                                  f"that saved one, or a weight file (.pt, .pth, .bin, .safetensors)")
    elif not path.is_file():
        raise CheckpointError(f"{option} {source}: no such file or folder; pass a run folder or a weight file "
                              f"(.pt, .pth, .bin, .safetensors)")
    return path


def read_weights(source: str | Path, option: str = "--init-from") -> WeightFile:
    path = weights_path(source, option)
    if path.suffix == ".safetensors":
        return WeightFile(_read_safetensors(path, option), path, "safetensors file")
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{option} {path}: holds a {type(obj).__name__}, not a state dict (a dict of "
                              f"tensors); save the weights with torch.save(model.state_dict(), PATH)")
    if obj.get("format") == FORMAT and isinstance(obj.get("model"), dict) and "config" in obj:
        use_ema = isinstance(obj.get("model_ema"), dict) and bool(obj["model_ema"])
        config = obj["config"] if isinstance(obj["config"], dict) else {}
        classes = obj.get("classes") if isinstance(obj.get("classes"), list) else None
        return WeightFile(obj["model_ema"] if use_ema else obj["model"], path, "fasttrain checkpoint",
                          "EMA" if use_ema else "model", config, classes)
    if _is_state_dict(obj):
        return WeightFile(obj, path, "state dict")
    for key in CONTAINER_KEYS:
        if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
            return WeightFile(obj[key], path, "checkpoint", key)
    raise CheckpointError(f"{option} {path}: found no state dict in it (neither a dict of tensors nor one under "
                          f"{', '.join(CONTAINER_KEYS)}); its keys: {', '.join(map(str, list(obj)[:8]))}")


def _read_safetensors(path: Path, option: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{option} {path}: reading safetensors files needs the safetensors package: "
                              f"pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{option} {path}: cannot read it as a safetensors file ({e})") from None


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and all(torch.is_tensor(v) for v in obj.values())

