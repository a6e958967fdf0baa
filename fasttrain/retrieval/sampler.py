"""Class-balanced batches for metric learning: P classes x m images each, drawn on the device.

Every batch holds `m` images of each of `P = batch_size // m` distinct classes, so every anchor has m - 1
positives and (P - 1) m negatives to mine from. Classes are drawn without replacement within a batch,
images without replacement within a class (with replacement only for a class that has fewer than m).
An epoch is `len(labels) // (P m)` batches (at least one). All draws come from one seeded generator per
epoch, so a run is reproducible and `set_epoch` gives each epoch its own batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data.splits import epoch_generator


class ClassBalancedSampler:
    def __init__(self, labels: torch.Tensor, batch_size: int, m: int = 4, *, seed: int = 0):
        if m < 2:
            raise ValueError(f"m (images per class in a batch) must be >= 2 to give positives, got {m}")
        self.labels = torch.as_tensor(labels).long()
        self.device = self.labels.device
        classes, counts = torch.unique(self.labels, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes for negatives, got {len(classes)}")
        self.m = m
        self.per_batch = min(max(2, batch_size // m), len(classes))  # P
        self.counts = counts
        self.order = torch.argsort(self.labels, stable=True)  # indices grouped by class
        self.offsets = torch.cumsum(counts, 0) - counts
        self.width = max(int(counts.max()), m)  # columns of the per-class shuffle
        self.seed = seed
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.per_batch * self.m

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def batch_indices(self, gen: torch.Generator) -> torch.Tensor:
        """One batch: (P m,) sample indices, class by class."""
        n_classes = len(self.counts)
        cls = torch.randperm(n_classes, generator=gen, device=self.device)[: self.per_batch]
        count = self.counts[cls]
        # random order of each chosen class's members: positions past the class size sort last
        keys = torch.rand(self.per_batch, self.width, generator=gen, device=self.device)
        pos = torch.arange(self.width, device=self.device)
        keys = torch.where(pos[None, :] < count[:, None], keys, 2.0)
        first = torch.argsort(keys, dim=1)[:, : self.m]
        first = first % count[:, None]  # a class smaller than m repeats members
        return self.order[self.offsets[cls][:, None] + first].reshape(-1)

    def __iter__(self) -> Iterator[torch.Tensor]:
        gen = epoch_generator(self.seed, self.epoch, self.device)
        for _ in range(len(self)):
            yield self.batch_indices(gen)
