"""NVIDIA DALI pipeline: the file reader over a dali-format dataset, decoding JPEG to uint8 HWC.

On a GPU the decoder runs with `device="mixed"` (nvJPEG, Huffman on the host, IDCT on the device) and
batches arrive on the device; on the CPU the pipeline is built with `device_id=None` and the CPU decoder.
Nothing else runs in DALI: augmentation is the same fused op as for every other pipeline.

Order and coverage: DALI's `shuffle_after_epoch` reshuffles the whole list every epoch (a true
permutation, not a shuffle buffer) with DALI's own fixed seed, so the list is first permuted with
`seed` to make the order seed-dependent; `pad_last_batch` keeps epochs aligned with batches so every
sample appears exactly once per epoch. For DDP the reader shards with `shard_id`/`num_shards`. DALI
pipelines are stateful: epoch e's order is the e-th epoch since construction, and `set_epoch` cannot
jump (it only checks), so build a fresh pipeline to restart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.formats import import_optional, read_file_list
from ..data.tensor_format import DatasetError


class DALIPipeline:
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
        import_optional("nvidia.dali", "dali")
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from . import require_format, shard_indices

        meta = require_format(data_dir, "dali")
        if split not in meta["splits"]:
            raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shape = tuple(meta["splits"][split]["shape"])
        files, labels = read_file_list(data_dir, split)
        idx = shard_indices(len(files), indices, world_size, seed)
        if shuffle:
            idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        self.per_rank = len(idx) // world_size
        files = [files[i] for i in idx]
        labels = labels[idx].astype(np.int32).tolist()
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None

        @pipeline_def(batch_size=batch_size, num_threads=num_workers or min(4, os.cpu_count() or 1),
                      device_id=device_id, seed=seed, prefetch_queue_depth=2)
        def decode_pipeline():
            jpegs, labs = fn.readers.file(files=files, labels=labels, shuffle_after_epoch=shuffle,
                                          pad_last_batch=True, shard_id=rank, num_shards=world_size, name="Reader")
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            return images, labs

        self.pipe = decode_pipeline()
        self.pipe.build()
        policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
        self.iterator = DALIGenericIterator(self.pipe, ["images", "labels"], reader_name="Reader",
                                            last_batch_policy=policy, auto_reset=True)
        self.epochs_run = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epochs_run:
            raise ValueError(f"the DALI pipeline is at epoch {self.epochs_run} and cannot jump to epoch {epoch}; "
                             "DALI readers are stateful: build a new pipeline to restart")

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.iterator:
            out = batch[0]
            labels = out["labels"].view(-1).to(self.device, torch.int64, non_blocking=True)
            yield out["images"], labels
        self.epochs_run += 1
