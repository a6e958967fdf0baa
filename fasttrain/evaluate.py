"""Evaluation on a uint8 split held on the device, with optional test-time augmentation."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale, bias, *, amp_dtype,
             batch_size: int = 1000, tta: str = "none") -> dict:
    """Loss and accuracy on uint8 NHWC `images`, with optional flip or flip+translate TTA."""
    from .augment import normalize

    model.eval()
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    ctx = torch.autocast(images.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with ctx:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], scale, bias, amp_dtype or torch.float32)
            y = labels[start : start + batch_size]
            logits = _tta_logits(model, x, tta).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = len(images)
    return {"loss": total_loss.item() / n, "acc": correct.item() / n}


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
    translated = torch.stack([mirror(s.contiguous(memory_format=torch.channels_last)) for s in shifted]).mean(0)
    return 0.5 * logits + 0.5 * translated
