"""The torchvision baseline: a `Dataset` + `DataLoader` with worker processes, as most users start.

Reads either a dali-format dataset (JPEG files + list; decoded per sample with PIL, like `ImageFolder`,
then `transforms.PILToTensor`) or a tensor-format dataset (one memory-mapped array). Workers only decode;
batches are collated to uint8 NHWC, pinned, and moved to the device, where the fused augmentation runs
as for every other pipeline. The sample order is the tensor pipeline's on the CPU (a torch.randperm
seeded with seed * 100003 + epoch, contiguous slice per rank), so the two can be compared batch for batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms
from torchvision.datasets.folder import default_loader

from ..data.errors import DatasetError
from ..data.formats import read_file_list
from ..data.splits import epoch_permutation
from ..data.tensor_format import load_split
from . import require_format


class JpegListDataset(Dataset):
    """(path, label) pairs decoded with torchvision's default (PIL) loader to uint8 HWC tensors."""

    def __init__(self, files: list[str], labels: np.ndarray):
        self.files, self.labels = files, labels
        self.to_tensor = transforms.PILToTensor()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        chw = self.to_tensor(default_loader(self.files[i]))
        return chw.permute(1, 2, 0).contiguous(), int(self.labels[i])


class ArrayDataset(Dataset):
    """Samples of a memory-mapped uint8 NHWC array (each worker maps the file itself)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[i])), int(self.labels[i])


class EpochSampler(Sampler[int]):
    """This rank's share of a per-epoch permutation (same formula as the tensor pipeline on the CPU)."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.per_rank = n // world_size if world_size > 1 else n
        self.epoch = 0

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            perm = epoch_permutation(self.n, self.seed, self.epoch)
        else:
            perm = torch.arange(self.n)
        start = self.rank * self.per_rank
        return iter(perm[start : start + self.per_rank].tolist())


class TorchvisionPipeline:
    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        indices: np.ndarray | None = None,
        num_workers: int | None = None,
    ):
        meta = require_format(data_dir, "torchvision")
        if split not in meta["splits"]:
            raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shape = tuple(meta["splits"][split]["shape"])
        if meta.get("format", "tensor") == "dali":
            files, labels = read_file_list(data_dir, split)
            if indices is not None:
                files, labels = [files[i] for i in indices], labels[indices]
            dataset: Dataset = JpegListDataset(files, labels)
        else:
            arrays = load_split(data_dir, split)
            images, labels = arrays.images, np.asarray(arrays.labels)
            if indices is not None:
                images, labels = images[np.asarray(indices)], labels[indices]
            dataset = ArrayDataset(images, labels)
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        workers = 2 if num_workers is None else num_workers
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", drop_last=drop_last,
                                 persistent_workers=workers > 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        n = self.sampler.per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
