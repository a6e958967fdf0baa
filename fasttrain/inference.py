"""Using a trained checkpoint: `load_checkpoint` rebuilds the model, `evaluate_checkpoint` computes every
metric on a split of a converted dataset (`fasttrain eval`), `predict_images` returns the top-k classes of
image files of any size, resized exactly as `fasttrain convert` resizes (`fasttrain predict`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


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
    from .models import create_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected RUN_DIR/checkpoint.pt or "
                                f"RUN_DIR/best.pt)")
    ckpt = load_file(path)
    missing = [k for k in ("model", "config", "classes", "mean", "std") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a fasttrain checkpoint (missing {missing})")
    cfg = ckpt["config"]
    if model is None:
        try:
            model = create_model(cfg["model"], len(ckpt["classes"]), **cfg.get("model_kwargs", {}))
        except KeyError as e:  # a model this installation cannot build (timm missing, a user's nn.Module)
            raise ValueError(f"{path}: {e.args[0]}") from None
    state, weights = ckpt["model"], "model"
    if use_ema and ckpt.get("model_ema"):
        state, weights = ckpt["model_ema"], "ema"
    model.load_state_dict(state)
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


def evaluate_checkpoint(path: str | Path, data: str | Path, *, split: str = "test", tta: str = "none",
                        device: str = "auto", batch_size: int = 500, use_ema: bool = True,
                        amp: str = "off") -> dict:
    """Every metric of `fasttrain.evaluate.evaluate` (with the confusion matrix) on `split` of `data`."""
    from .augment import norm_constants
    from .data.formats import read_labels
    from .data.tensor_format import read_meta
    from .evaluate import evaluate
    from .pipelines import load_split_tensors
    from .runtime import resolve_amp, resolve_device

    dev = resolve_device(device)
    loaded = load_checkpoint(path, dev, use_ema=use_ema)
    meta = read_meta(data)
    if list(meta["classes"]) != loaded.classes:
        raise ValueError(f"--data {data}: its classes differ from the checkpoint's "
                         f"({len(meta['classes'])} vs {len(loaded.classes)} classes); evaluate on the "
                         f"dataset the model was trained for")
    labels = read_labels(data, split)
    # decode with the backend that reads this dataset's format (tensor, ffcv or dali)
    images, labels_t = load_split_tensors(meta.get("format", "tensor"), data, split, device=dev,
                                          indices=np.arange(len(labels)))
    scale, bias = norm_constants(loaded.mean, loaded.std, dev)
    out = evaluate(loaded.model, images, labels_t, scale, bias, amp_dtype=resolve_amp(amp, dev),
                   batch_size=batch_size, tta=tta, num_classes=len(loaded.classes), confusion=True)
    out.update({"split": split, "samples": len(labels), "tta": tta, "weights": loaded.weights,
                "classes": loaded.classes, "checkpoint": str(path), "data": str(data)})
    return out


def predict_images(path: str | Path, images: list[str | Path], *, top_k: int = 5, device: str = "auto",
                   tta: str = "none", use_ema: bool = True) -> list[dict]:
    """[{'image': path, 'top': [(class, probability), ...]}] for each image file."""
    from .augment import norm_constants, normalize
    from .data.sources import decode_image
    from .evaluate import _tta_logits
    from .runtime import resolve_device

    dev = resolve_device(device)
    loaded = load_checkpoint(path, dev, use_ema=use_ema)
    h, w = loaded.image_size
    if h != w:
        raise ValueError(f"{path}: trained on {h}x{w} images; predict resizes to squares only")
    batch = []
    for img in images:
        p = Path(img)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: image not found")
        arr = decode_image(p.read_bytes(), str(p), size=h)  # short side to h, centre crop (as convert)
        batch.append(arr)
    x = torch.from_numpy(np.stack(batch)).to(dev)
    scale, bias = norm_constants(loaded.mean, loaded.std, dev)
    with torch.no_grad():
        logits = _tta_logits(loaded.model, normalize(x, scale, bias, torch.float32), tta)
        probs = torch.softmax(logits.float(), 1)
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [{"image": str(img),
             "top": [(loaded.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]}
            for img, vs, ix in zip(images, values, indices)]
