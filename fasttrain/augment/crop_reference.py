"""The reference of the crop-resize kernel (torch.ops.fasttrain.crop_resize, cuda_ext/csrc/crop_resize.h):
torchvision's resized_crop on float32 with antialias=True, then the flip, then round half to even and
clamp to uint8. The kernel, its host emulation and the CPU JPEG decoder match this within +-1 level
(for integer boxes inside the image; docs/crop_kernel.md) and each other bit for bit."""

from __future__ import annotations

import torch


def resized_crop_reference(images: list[torch.Tensor], boxes, flips, size: int) -> torch.Tensor:
    """images: B uint8 (3, H, W) tensors; boxes (B, 4) integer (y0, x0, h, w) inside each image; flips (B,)
    bools; -> uint8 (B, size, size, 3) on the images' device."""
    import torchvision.transforms.v2.functional as tvf

    boxes = torch.as_tensor(boxes)
    if boxes.is_floating_point() and not torch.equal(boxes, boxes.round()):
        raise ValueError("the reference is defined for integer boxes only")
    boxes = boxes.long().tolist()
    flips = torch.as_tensor(flips, dtype=torch.bool).tolist()
    out = []
    for img, (y0, x0, h, w), flip in zip(images, boxes, flips, strict=True):
        if img.dim() != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (3, H, W), got {img.dtype} {tuple(img.shape)}")
        if not (0 <= y0 and 0 <= x0 and h > 0 and w > 0 and y0 + h <= img.shape[1] and x0 + w <= img.shape[2]):
            raise ValueError(f"box {(y0, x0, h, w)} is not inside the {tuple(img.shape[1:])} image")
        res = tvf.resized_crop(img.float(), y0, x0, h, w, [size, size], antialias=True)
        if flip:
            res = res.flip(-1)
        out.append(res.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))
    return torch.stack(out)
