"""Evaluation on a uint8 split held on the device: loss, top-1/top-5, macro precision/recall/F1, per-class
accuracy and the confusion matrix, with optional test-time augmentation; and the seeded, stratified
validation split carved from train.

Everything is accumulated on the device (a confusion matrix by bincount and two scalars) and read back
once at the end. `metrics_from_confusion` derives the class metrics; `reference_metrics` recomputes
them with plain Python loops from (labels, predictions) for the tests.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .choices import TTA_MODES  # the list lives once, in choices


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale, bias, *, amp_dtype,
             batch_size: int = 1000, tta: str = "none", num_classes: int | None = None,
             confusion: bool = False) -> dict:
    """Metrics on uint8 NHWC `images`: loss, acc (top-1), top5, precision, recall, f1 (macro), and with
    `confusion=True` also per_class_acc and confusion (rows = true class, columns = predicted)."""
    from .augment import normalize

    if tta not in TTA_MODES:
        raise ValueError(f"--tta: must be one of {TTA_MODES}, got {tta!r}")
    was_training = model.training
    model.eval()
    dev = images.device
    total_loss = torch.zeros((), device=dev)
    top5 = torch.zeros((), device=dev, dtype=torch.long)
    preds = []
    ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with ctx:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], scale, bias, amp_dtype or torch.float32)
            y = labels[start : start + batch_size]
            logits = _tta_logits(model, x, tta).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            k = min(5, logits.shape[1])
            top5 += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
            preds.append(logits.argmax(1))
    model.train(was_training)
    n = len(images)
    pred = torch.cat(preds) if preds else labels.new_zeros(0)
    c = num_classes or (int(torch.cat([labels, pred]).max().item()) + 1 if n else 1)
    cm = torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
    out = {"loss": total_loss.item() / max(n, 1), "top5": top5.item() / max(n, 1)}
    out.update(metrics_from_confusion(cm.cpu().numpy()))
    if not confusion:
        out.pop("per_class_acc")
        out.pop("confusion")
    return out


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """acc, macro precision / recall / F1 (classes absent from both labels and predictions are skipped,
    a class never predicted has precision 0, as scikit-learn's zero_division=0), per-class accuracy."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)  # true count per class
    predicted = cm.sum(0).astype(np.float64)
    present = (support + predicted) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    return {
        "acc": float(tp.sum() / total) if total else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_acc": [float(r) for r in recall],
        "confusion": cm.tolist(),
    }


def reference_metrics(labels: list[int], preds: list[int], num_classes: int) -> dict:
    """The same metrics with explicit loops (the reference the tests hold the fast path to)."""
    cm = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(labels, preds):
        cm[t][p] += 1
    ps, rs, fs = [], [], []
    for k in range(num_classes):
        tp = cm[k][k]
        n_true = sum(cm[k])
        n_pred = sum(cm[i][k] for i in range(num_classes))
        if n_true == 0 and n_pred == 0:
            continue
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_true if n_true else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if p + r else 0.0)
    return {"acc": sum(cm[k][k] for k in range(num_classes)) / len(labels), "precision": sum(ps) / len(ps),
            "recall": sum(rs) / len(rs), "f1": sum(fs) / len(fs), "confusion": cm}


def _tta_logits(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    if tta == "none":
        return model(x)
    mirror = lambda inp: 0.5 * model(inp) + 0.5 * model(inp.flip(-1))  # noqa: E731
    logits = mirror(x)
    if tta == "flip":
        return logits
    # flip_translate: average with 1-pixel translations up-left and down-right (airbench's level 2)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, 0:h, 0:w], padded[:, :, 2 : h + 2, 2 : w + 2]]
    views = [mirror(s.contiguous(memory_format=torch.channels_last)) for s in shifted]
    translated = torch.stack(views).mean(0)
    return 0.5 * logits + 0.5 * translated


def prefixed(split: str, metrics: dict) -> dict:
    """The scalar metrics of one evaluation as row columns: {'val_loss': ..., 'val_acc': ..., ...}."""
    return {f"{split}_{k}": metrics[k] for k in ("loss", "acc", "top5", "precision", "recall", "f1")}
