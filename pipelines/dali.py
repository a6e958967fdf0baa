"""NVIDIA DALI pipeline: the file reader over a dali-format dataset, decoding JPEG to uint8 HWC.

On a GPU the decoder runs with `device="mixed"` (nvJPEG, Huffman on the host, IDCT on the device) and
batches arrive on the device; on the CPU the pipeline is built with `device_id=None` and the CPU decoder.
Nothing else runs in DALI: augmentation is the same fused op as for every other pipeline.

Order: DALI's own shuffles are either a shuffle buffer (not a permutation: a class-sorted list would
give nearly single-class batches) or `shuffle_after_epoch` (a permutation from DALI's fixed seed that
depends on how many epochs ran before, so a resumed run could not reproduce it). Instead the order is a
permutation we draw with numpy's generator seeded by (seed, epoch): a pure function of seed and epoch, the
same on every DDP rank, of which each rank reads a contiguous share. The encoded JPEG bytes reach DALI
through an external source that reads the files of each batch in that order.

The DALI pipeline (decoder set-up, nvJPEG handles) is built once per run, on the first iteration, not per
epoch: DALI numbers its epochs from 0, and epoch `base + k` of ours is its k-th. Only a `set_epoch` out of
sequence (a resumed run's first epoch is in sequence: it is where the pipeline starts) or an epoch left
unfinished (its batches are already queued) rebuilds it. Every sample appears exactly once per epoch; the
last batch is short unless `drop_last`.
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


class _BatchReader:
    """DALI's external source: the encoded JPEGs and labels of each batch of this rank's share, in the
    epoch's order. DALI numbers its epochs from 0; its epoch k is our epoch base_epoch + k."""

    def __init__(self, files: np.ndarray, labels: np.ndarray, idx: np.ndarray, seed: int, shuffle: bool,
                 start: int, count: int, batch_size: int, drop_last: bool):
        self.files, self.labels, self.idx, self.seed, self.shuffle = files, labels, idx, seed, shuffle
        self.start, self.count, self.batch_size, self.drop_last = start, count, batch_size, drop_last
        self.base_epoch = 0
        self._share, self._share_epoch = None, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.idx
        return self.idx[np.random.default_rng([self.seed, epoch]).permutation(len(self.idx))]

    def __call__(self, info):
        epoch = self.base_epoch + info.epoch_idx
        if self._share_epoch != epoch:  # once per epoch, not per batch
            self._share = self.epoch_order(epoch)[self.start:self.start + self.count]
            self._share_epoch = epoch
        begin = info.iteration * self.batch_size
        end = min(begin + self.batch_size, self.count)
        if begin >= self.count or (self.drop_last and end - begin < self.batch_size):
            raise StopIteration  # the end of DALI's epoch
        sel = self._share[begin:end]
        return [np.fromfile(f, dtype=np.uint8) for f in self.files[sel]], self.labels[sel].astype(np.int64)[:, None]


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
        from . import require_format, shard_indices

        meta = require_format(data_dir, "dali")
        if split not in meta["splits"]:
            raise DatasetError(f"{data_dir} has no split {split!r}; it has {sorted(meta['splits'])}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_threads = num_workers or min(4, os.cpu_count() or 1)
        self.shape = tuple(meta["splits"][split]["shape"])
        files, labels = read_file_list(data_dir, split)
        self.idx = shard_indices(len(files), indices, world_size, seed)
        self.files = np.asarray(files, dtype=object)
        self.labels = labels
        self.per_rank = len(self.idx) // world_size
        self.epoch = 0
        self.builds = 0  # DALI pipelines built so far: one per run unless epochs jump
        self._reader = _BatchReader(self.files, self.labels, self.idx, seed, shuffle, rank * self.per_rank,
                                    self.per_rank, batch_size, drop_last)
        self._dali = None  # the DALI iterator, built on the first iteration
        self._next_epoch = 0  # the epoch the built pipeline serves next

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """Dataset indices of the whole epoch (all ranks), in order: the same on every rank."""
        return self._reader.epoch_order(self.epoch if epoch is None else epoch)

    def _build(self, base_epoch: int):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.builds += 1
        reader = self._reader  # the pipeline holds the reader, never self: no cycle keeps DALI's threads alive
        reader.base_epoch = base_epoch
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                      seed=self.seed, prefetch_queue_depth=2)
        def decode_pipeline():
            jpegs, labels = fn.external_source(source=reader, num_outputs=2, batch=True, batch_info=True,
                                               dtype=[types.UINT8, types.INT64])
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            return images, labels

        pipe = decode_pipeline()
        pipe.build()
        return DALIGenericIterator(pipe, ["images", "labels"], auto_reset=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._dali is None or self._next_epoch != self.epoch:
            self._dali = self._build(self.epoch)
        finished = False
        try:
            for batch in self._dali:
                out = batch[0]
                yield out["images"], out["labels"].view(-1).to(self.device, torch.int64, non_blocking=True)
            finished = True
        finally:
            if finished:  # DALI has reset itself and queues our next epoch
                self._next_epoch = self.epoch + 1
            else:  # abandoned mid-epoch: its queue holds this epoch's batches
                self._dali = None
