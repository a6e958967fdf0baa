"""FFCV pipeline: `ffcv.loader.Loader` over a `.beton`, decoding to uint8 NHWC and nothing else.

Only decode + ToTensor (+ ToDevice on a GPU) runs inside FFCV; crop/flip/cutout/normalise happen after,
in the same fused op as every other pipeline. FFCV's RANDOM order draws its permutation from
`numpy.random.default_rng(seed + epoch)`, so a run is reproducible and `set_epoch` can jump to any epoch.
For DDP it uses FFCV's own `distributed=True` (torch's DistributedSampler, needs an initialised process
group); the index set is first cut to a multiple of the world size so every rank runs the same steps.
The first epoch includes FFCV's numba compilation (seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.errors import DatasetError
from ..data.formats import import_optional
from . import require_format, shard_indices


class FFCVPipeline:
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
        import_optional("ffcv", "ffcv")
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToDevice, ToTensor

        meta = require_format(data_dir, "ffcv")
        info = meta["splits"].get(split)
        if info is None:
            raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.world_size = world_size
        self.shape = tuple(info["shape"])
        idx = shard_indices(info["count"], indices, world_size, seed)
        self.per_rank = len(idx) // world_size
        if world_size > 1 and not torch.distributed.is_initialized():
            raise RuntimeError("--pipeline ffcv with world_size > 1 uses FFCV's distributed=True, which needs "
                               "torch.distributed to be initialised first")
        to_device = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        self.loader = Loader(
            str(Path(data_dir) / info["file"]),
            batch_size=batch_size,
            num_workers=num_workers or -1,
            order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
            distributed=world_size > 1,
            seed=seed,
            indices=idx,
            drop_last=drop_last,
            os_cache=True,
            pipelines={"image": [SimpleRGBImageDecoder(), ToTensor(), *to_device],
                       "label": [IntDecoder(), ToTensor(), *to_device]},
        )

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch  # FFCV's own epoch counter; the order is a function of it

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # FFCV reuses its CPU output buffers a few batches later: consume (augment) each batch before the next.
        for images, labels in self.loader:
            yield images, labels.view(-1)
