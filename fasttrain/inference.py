"""Using a trained checkpoint: `checkpoint_path` finds it in a run, `load_checkpoint` rebuilds the model and
`evaluate_checkpoint` computes every metric on a split of a converted dataset (`fasttrain eval`). Prediction
has one path, the Python API's `fasttrain.predict`, which `fasttrain predict` calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .init_weights import check_model_config
from .models import create_model, get_entry
from .models.options import check_model_kwargs


@dataclass
class Loaded:
    model: nn.Module
    config: dict
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_size: tuple[int, int]
    weights: str  # which weights were loaded: "ema" or "model"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", *, use_ema: bool = True,
                    model: nn.Module | None = None) -> Loaded:
    """Model + normalisation + class names from checkpoint.pt / best.pt; the EMA weights when present
    (and use_ema). `model`: load the weights into this module instead of rebuilding the run's model by
    name (needed for runs of an nn.Module given to fasttrain.fit). Raises FileNotFoundError / ValueError
    naming the file and what was expected."""
    from .checkpoint import load as load_file  # weights_only=True: a checkpoint never runs code

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected RUN_DIR/checkpoint.pt or "
                                f"RUN_DIR/best.pt)")
    ckpt = load_file(path)
    missing = [k for k in ("model", "config", "classes", "mean", "std") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a fasttrain checkpoint (missing {missing})")
    cfg, classes = ckpt["config"], ckpt["classes"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str) or \
            not isinstance(cfg.get("model_kwargs", {}), dict):
        raise ValueError(f"{path}: its 'config' is not a run's settings (a mapping with 'model' and "
                         f"'model_kwargs'); the file is damaged or was edited")
    if not isinstance(classes, (list, tuple)) or len(classes) < 2:
        raise ValueError(f"{path}: its 'classes' must list at least 2 class names, got {classes!r:.80}")
    for key in ("mean", "std"):
        values = ckpt[key]
        if not (isinstance(values, (list, tuple)) and len(values) == 3 and
                all(isinstance(v, (int, float)) for v in values)) or (key == "std" and min(values) <= 0):
            raise ValueError(f"{path}: its '{key}' must be 3 per-channel numbers{' > 0' if key == 'std' else ''}, "
                             f"got {values!r:.80}")
    state, weights = ckpt["model"], "model"
    if use_ema and ckpt.get("model_ema"):
        state, weights = ckpt["model_ema"], "ema"
    name, kwargs = cfg["model"], cfg.get("model_kwargs", {})
    if model is not None:  # the caller's module (a run of an nn.Module given to fasttrain.fit)
        model.load_state_dict(state)
        return _ready(model, ckpt, cfg, device, weights)
    try:
        get_entry(name)
        check_model_kwargs(name, kwargs)
    except (ValueError, TypeError, KeyError) as e:  # KeyError: a model this installation cannot build (timm)
        raise ValueError(f"{path}: cannot rebuild its model: {e.args[0] if isinstance(e, KeyError) else e}") from None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path}: its '{weights}' entry is not a state dict of tensors; the file is damaged or "
                         f"was edited")
    check_model_config(name, len(classes), kwargs, state, path)  # on the meta device: a huge size allocates nothing
    model = create_model(name, len(classes), **kwargs)
    model.load_state_dict(state)
    return _ready(model, ckpt, cfg, device, weights)


def _ready(model: nn.Module, ckpt: dict, cfg: dict, device: torch.device | str, weights: str) -> Loaded:
    model = model.to(device).eval()
    if cfg.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    size = ckpt.get("image_size") or _size_from_data(cfg.get("data")) or [32, 32]
    return Loaded(model, cfg, list(ckpt["classes"]), list(ckpt["mean"]), list(ckpt["std"]), tuple(size),
                  weights)


def _size_from_data(data: str | None) -> list[int] | None:
    """Older checkpoints lack image_size: read it from the training data's meta.json if it is still there."""
    try:
        from .data.tensor_format import read_meta

        return list(read_meta(data)["shape"][:2]) if data else None
    except Exception:
        return None


def checkpoint_path(target: str | Path, which: str | None = None) -> Path:
    """The checkpoint file `fasttrain eval TARGET [--checkpoint best|last]` (and `fasttrain.load`) means:
    TARGET itself when it is a file; in a run directory best.pt (which: best) or checkpoint.pt (last), and by
    default best.pt where the run made one (its reported test accuracy is best.pt's), else checkpoint.pt."""
    if which not in (None, "best", "last"):
        raise ValueError(f"--checkpoint: must be best or last, got {which!r}")
    target = Path(target)
    if not target.is_dir():
        if not target.exists():
            raise FileNotFoundError(f"{target}: no such run directory or checkpoint file")
        if which is not None:
            raise FileNotFoundError(f"--checkpoint {which}: applies to a run directory; {target} is a file: "
                                    f"pass its run directory instead")
        return target
    best, last = target / "best.pt", target / "checkpoint.pt"
    if which == "best" and not best.is_file():
        raise FileNotFoundError(f"{best}: not there; a run writes best.pt only when it trains with a validation "
                                f"split (--val-split N); its last weights are --checkpoint last")
    if which == "best" or (which is None and best.is_file()):
        return best
    if not last.is_file():
        raise FileNotFoundError(f"{target}: no checkpoint.pt; pass the directory of a run started by `fasttrain "
                                f"run` or fasttrain.fit (one that trained at least an epoch)")
    return last


def evaluate_checkpoint(path: str | Path, data: str | Path | None = None, *, split: str = "test",
                        tta: str | None = None, device: str = "auto", batch_size: int = 500, use_ema: bool = True,
                        amp: str = "off", subset: int | None = None) -> dict:
    """Every metric of `fasttrain.evaluate.evaluate` (with the confusion matrix) on `split` of `data`
    (default: the dataset the checkpoint was trained on), with the run's test-time augmentation unless
    `tta` is given. `subset`: that many images of the split, drawn as `run --test-subset` draws them
    (stratified, seeded with the run's seed), so the same number picks the images the run tested on."""
    from .augment import norm_constants
    from .data.formats import read_labels
    from .data.splits import stratified_subset
    from .data.tensor_format import read_meta
    from .evaluate import evaluate
    from .pipelines import load_split_tensors
    from .runtime import resolve_amp, resolve_device

    if batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {batch_size}")
    if subset is not None and subset < 1:
        raise ValueError(f"--subset: must be >= 1 (images of the split), got {subset}")
    dev = resolve_device(device)
    loaded = load_checkpoint(path, dev, use_ema=use_ema)
    if data is None:
        data = loaded.config.get("data")
        if not data or not Path(data).is_dir():
            raise FileNotFoundError(f"{path}: the dataset it was trained on ({data}) is not there from this "
                                    f"directory; pass --data DIR (a converted dataset with the same classes)")
    tta = tta if tta is not None else loaded.config.get("tta", "none")
    meta = read_meta(data)
    if list(meta["classes"]) != loaded.classes:
        raise ValueError(f"--data {data}: its classes differ from the checkpoint's "
                         f"({len(meta['classes'])} vs {len(loaded.classes)} classes); evaluate on the "
                         f"dataset the model was trained for")
    if split not in meta.get("splits", {split: None}):
        carved = " (a run's val split is carved from train at run time and is not stored)" if split == "val" else ""
        raise ValueError(f"--split {split}: {data} has no such split{carved}; it has "
                         f"{', '.join(sorted(meta['splits']))}")
    labels = read_labels(data, split)
    indices = stratified_subset(labels, subset or len(labels), loaded.config.get("seed", 0))
    # decode with the backend that reads this dataset's format (tensor, ffcv or dali)
    images, labels_t = load_split_tensors(meta.get("format", "tensor"), data, split, device=dev, indices=indices)
    scale, bias = norm_constants(loaded.mean, loaded.std, dev)
    out = evaluate(loaded.model, images, labels_t, scale, bias, amp_dtype=resolve_amp(amp, dev),
                   batch_size=batch_size, tta=tta, num_classes=len(loaded.classes), confusion=True)
    out.update({"split": split, "samples": len(indices), "tta": tta, "weights": loaded.weights,
                "classes": loaded.classes, "checkpoint": str(path), "data": str(data)})
    return out
