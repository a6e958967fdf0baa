"""The default pipeline: the whole uint8 dataset lives on the training device.

Each epoch is one device-side random permutation; a batch is a gather (index_select on the GPU, numpy take on the CPU) of the resident tensor.
No DataLoader, no worker processes, no per-batch host-to-device copy; the same code runs on the CPU.
For DDP each rank takes a contiguous slice of the shared permutation (same seed on every rank).
`set_resolution(res)` (progressive resizing) resizes each batch on the device after the gather: the stored
images are one fixed size, so a smaller or larger training resolution is an antialiased bilinear resize of
the whole image (`resize_images`, also used for evaluation at another resolution).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.splits import epoch_permutation


def resize_images(images: torch.Tensor, res: int | None, chunk: int = 256) -> torch.Tensor:
    """uint8 NHWC images resized to res x res (antialiased bilinear, as PIL and torchvision's antialias=True;
    rounded to the nearest level), `chunk` images at a time so the float copy stays small. The images
    themselves when they are res x res already or res is None."""
    if res is None or tuple(images.shape[1:3]) == (res, res):
        return images
    out = torch.empty((len(images), res, res, images.shape[3]), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    return out


class TensorPipeline:
    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.device = torch.device(device)
        self.images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).to(
            self.device, torch.int64)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # positions (into images) of the batch last yielded: per-sample keys, e.g. for alternating flips
        self.batch_indices: torch.Tensor | None = None
        # Each rank's share of the permutation: equal sizes so every rank runs the same number of steps.
        self.per_rank = len(self.images) // world_size if world_size > 1 else len(self.images)
        self.res: int | None = None  # batches resized to res x res; None: the stored size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_resolution(self, res: int | None) -> None:
        """The size of the batches from the next __iter__ on (None: the stored size)."""
        self.res = res

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, on the device."""
        n = len(self.images)
        if self.shuffle:
            perm = epoch_permutation(n, self.seed, self.epoch, self.device)
        else:
            perm = torch.arange(n, device=self.device)
        start = self.rank * self.per_rank
        return perm[start : start + self.per_rank]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.epoch_indices()
        if self.device.type == "cpu":
            # numpy's take gathers a 512-image batch in ~0.5 ms; torch's multi-threaded index_select of
            # the same batch took ~18 ms on 2 busy cores (thread-pool overhead dominates small gathers).
            images, labels, idx_np = self.images.numpy(), self.labels.numpy(), idx.numpy()
            for b in range(len(self)):
                sel = idx_np[b * self.batch_size : (b + 1) * self.batch_size]
                self.batch_indices = torch.from_numpy(sel)
                batch = resize_images(torch.from_numpy(np.take(images, sel, axis=0)), self.res)
                yield batch, torch.from_numpy(np.take(labels, sel))
            return
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            self.batch_indices = sel
            yield resize_images(self.images.index_select(0, sel), self.res), self.labels.index_select(0, sel)
