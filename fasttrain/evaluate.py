"""Evaluation on a uint8 split held on the device: loss, top-1/top-5, macro precision/recall/F1, per-class
accuracy and the confusion matrix, with optional test-time augmentation.

Everything is accumulated on the device (a confusion matrix by bincount and two scalars) and read back
once at the end. Under DDP (`dist=` a DistContext) each rank evaluates a slice of the set and the sums are
all-reduced, so every rank gets the metrics of the whole set. `metrics_from_confusion` derives the class metrics; `reference_metrics` recomputes
them with plain Python loops from (labels, predictions) for the tests.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import normalize
from .choices import TTA_MODES


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale, bias, *, amp_dtype,
             batch_size: int = 1000, tta: str = "none", num_classes: int | None = None,
             confusion: bool = False, dist=None) -> dict:
    """Metrics on uint8 NHWC `images`: loss, acc (top-1), top5, precision, recall, f1 (macro), and with
    `confusion=True` also per_class_acc and confusion (rows = true class, columns = predicted)."""
    if dist is not None and dist.enabled:
        return _evaluate_across_ranks(dist, model, images, labels, scale, bias, amp_dtype=amp_dtype,
                                      batch_size=batch_size, tta=tta, num_classes=num_classes, confusion=confusion)
    batches = ((images[s : s + batch_size], labels[s : s + batch_size]) for s in range(0, len(images), batch_size))
    return evaluate_batches(model, batches, scale, bias, amp_dtype=amp_dtype, tta=tta, num_classes=num_classes,
                            confusion=confusion, device=images.device)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches, scale, bias, *, amp_dtype, tta: str = "none",
                     num_classes: int | None = None, confusion: bool = False, dist=None,
                     device: torch.device | str | None = None) -> dict:
    """`evaluate` over an iterable of (uint8 NHWC images, labels) batches, e.g. a pipeline that decodes a
    split batch by batch, so the split is never held whole. Under DDP each rank passes its own share of the
    split and the sums are all-reduced."""
    if tta not in TTA_MODES:
        raise ValueError(f"--tta: must be one of {TTA_MODES}, got {tta!r}")
    if dist is not None and dist.enabled:
        if num_classes is None:
            raise ValueError("distributed evaluation needs num_classes (every rank's confusion matrix must have "
                             "the same shape)")
        dist.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere
        res = evaluate_batches(model, batches, scale, bias, amp_dtype=amp_dtype, tta=tta, num_classes=num_classes,
                               confusion=True, device=dist.device)
        return _reduce_across_ranks(dist, res, confusion)
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else scale.device
    total_loss = torch.zeros((), device=dev)
    top5 = torch.zeros((), device=dev, dtype=torch.long)
    preds, seen = [], []
    ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with ctx:
        for images, y in batches:
            x = normalize(images, scale, bias, amp_dtype or torch.float32)
            logits = _tta_logits(model, x, tta).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            k = min(5, logits.shape[1])
            top5 += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
            preds.append(logits.argmax(1))
            seen.append(y)
    model.train(was_training)
    labels = torch.cat(seen) if seen else torch.zeros(0, dtype=torch.long, device=dev)
    n = len(labels)
    pred = torch.cat(preds) if preds else labels.new_zeros(0)
    c = num_classes or (int(torch.cat([labels, pred]).max().item()) + 1 if n else 1)
    cm = torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
    out = {"loss": total_loss.item() / max(n, 1), "top5": top5.item() / max(n, 1), "samples": n}
    out.update(metrics_from_confusion(cm.cpu().numpy()))
    if not confusion:
        out.pop("per_class_acc")
        out.pop("confusion")
    return out


def _evaluate_across_ranks(dist, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale, bias, *,
                           num_classes: int | None, confusion: bool, **kw) -> dict:
    """Each rank evaluates its slice of the tensors; see `_reduce_across_ranks`."""
    if num_classes is None:
        raise ValueError("distributed evaluation needs num_classes (every rank's confusion matrix must have "
                         "the same shape)")
    dist.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere
    sl = dist.eval_slice(len(images))
    res = evaluate(model, images[sl], labels[sl], scale, bias, confusion=True, num_classes=num_classes, **kw)
    return _reduce_across_ranks(dist, res, confusion)


def _reduce_across_ranks(dist, res: dict, confusion: bool) -> dict:
    """One rank's metrics (with its confusion matrix) -> the whole set's: sums (samples, loss, top5,
    confusion matrix) all-reduced, the class metrics recomputed from the summed confusion matrix."""
    n = res["samples"]
    means = [k for k, v in res.items() if isinstance(v, float)]
    sums = dist.all_reduce_(torch.tensor([float(n)] + [res[k] * n for k in means], dtype=torch.float64,
                                         device=dist.device))
    cm = dist.all_reduce_(torch.as_tensor(res["confusion"], dtype=torch.float64, device=dist.device))
    total = max(float(sums[0]), 1.0)
    out = {**res, **{k: float(s) / total for k, s in zip(means, sums[1:])}, "samples": int(round(float(sums[0])))}
    out.update(metrics_from_confusion(cm.round().long().cpu().numpy()))
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
