"""The streaming pipeline: batches decoded from a jpeg store (fasttrain/data/jpeg_store.py) as they are
needed, the random-resized crop and flip done inside the decode, so no dataset is ever held in memory.

Per batch: the sample ids of the epoch's order (`epoch_permutation(seed, epoch)`, each rank a contiguous
share, as the tensor pipeline), their JPEG bytes read with pread (`JpegStore.read`: no mmap, so resident
memory does not grow with the dataset), the crop boxes and flips of those ids (fasttrain/data/crops.py:
counter-based, keyed by (seed, epoch, sample id)), then one decoder call that returns the uint8
(B, res, res, 3) batch. Training draws torchvision's RandomResizedCrop boxes and a flip (unless
flip=False); evaluation
(`train=False`) takes the centre crop (shorter side resized to res / eval_ratio, centre res x res).

Decode runs ahead of training in a background thread with a bounded queue (`prefetch` batches): the
decoders release the GIL, so the step and the decode overlap. A batch is a pure function of (seed, epoch,
batch number, res): the same bytes whatever `num_workers` (decode threads) or the timing, and
`start_at(b)` resumes an epoch at batch b without decoding the batches before it.

Decoders (`decoder=`, or FASTTRAIN_DECODER; see stream_cpu.py and stream_gpu.py):
  auto       nvjpeg on a CUDA device, else cpu (else reference, with a warning, when the C++ decoder
             cannot be built)
  cpu        libjpeg-turbo with DCT scaling and region decode, all cores (the fast CPU path)
  reference  full decode + torchvision resized_crop (the switch that forces the reference path)
  nvjpeg     torchvision.io.decode_jpeg on the GPU + the crop-resize kernel
  dali       NVIDIA DALI image_slice + resize (where installed)
"""

from __future__ import annotations

import math
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.crops import centre_crop_box, flip_flags, rrc_params
from ..data.errors import DatasetError
from ..data.jpeg_store import JpegStore
from ..data.splits import epoch_permutation
from . import require_format, shard_indices

DECODERS = ("auto", "cpu", "reference", "nvjpeg", "dali")
DEFAULT_RES = 224
EVAL_RATIO = 224 / 256


def make_decoder(name: str, device: torch.device, threads: int | None):
    """The decoder `name` (see the module doc) for batches on `device`."""
    if name not in DECODERS:
        raise ValueError(f"FASTTRAIN_DECODER / decoder must be one of {DECODERS}, got {name!r}")
    from .stream_cpu import CpuCropDecoder, ReferenceCropDecoder

    if name == "auto":
        if device.type == "cuda":
            name = "nvjpeg"
        else:
            from fasttrain.cuda_ext import ExtensionUnavailable

            try:
                return CpuCropDecoder(threads)
            except ExtensionUnavailable as e:
                warnings.warn(f"fasttrain: the C++ JPEG decoder is unavailable ({e}); decoding with the slower "
                              "reference instead (set FASTTRAIN_DECODER=reference to choose it explicitly)",
                              RuntimeWarning, stacklevel=3)
                return ReferenceCropDecoder()
    if name == "cpu":
        return CpuCropDecoder(threads)
    if name == "reference":
        return ReferenceCropDecoder()
    from .stream_gpu import DaliCropDecoder, NvjpegCropDecoder

    if name == "nvjpeg":
        return NvjpegCropDecoder(device)
    return DaliCropDecoder(device, num_threads=threads or 4)


class StreamPipeline:
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
        train: bool = True,
        flip: bool = True,
        res: int = DEFAULT_RES,
        eval_ratio: float = EVAL_RATIO,
        decoder: str | None = None,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        require_format(data_dir, "stream")
        self.store = JpegStore(data_dir, split)
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.train, self.flip, self.eval_ratio, self.prefetch = train, flip, eval_ratio, max(1, prefetch)
        self.ids = shard_indices(len(self.store), indices, world_size, seed)  # dataset positions drawn from
        self.per_rank = len(self.ids) // world_size
        self.decoder = make_decoder(decoder or os.environ.get("FASTTRAIN_DECODER") or "auto", self.device,
                                    num_workers)
        self.set_resolution(res)
        self.epoch = 0
        self._start = 0
        # dataset positions of the batch last yielded (as the tensor pipeline's)
        self.batch_indices: torch.Tensor | None = None

    # ------------------------------------------------------------------ the pipeline contract
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_resolution(self, res: int) -> None:
        """Output side of the next batches (progressive resizing changes it between epochs)."""
        if int(res) < 1:
            raise ValueError(f"resolution must be >= 1 pixel, got {res}")
        self.res = int(res)

    def start_at(self, batch: int) -> None:
        """The next __iter__ starts at `batch` of the epoch (a mid-epoch resume): the batches before it are
        neither read nor decoded. Applies to one iteration only."""
        if not 0 <= batch <= len(self):
            raise ValueError(f"start_at: batch must lie in [0, {len(self)}], got {batch}")
        self._start = batch

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        return self.per_rank

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    # ------------------------------------------------------------------ batches
    def epoch_ids(self) -> np.ndarray:
        """This rank's dataset positions for the current epoch, in order."""
        n = len(self.ids)
        order = epoch_permutation(n, self.seed, self.epoch).numpy() if self.shuffle else np.arange(n)
        start = self.rank * self.per_rank
        return self.ids[order[start : start + self.per_rank]]

    def boxes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [B, 4] as (top, left, height, width), flips [B]) of samples `ids` in this epoch."""
        h, w = self.store.heights[ids], self.store.widths[ids]
        if self.train:
            box = rrc_params(h, w, ids, self.seed, self.epoch)
            flips = flip_flags(ids, self.seed, self.epoch) & self.flip
        else:
            box = centre_crop_box(h, w, self.res, self.eval_ratio)
            flips = np.zeros(len(ids), dtype=bool)
        return np.stack(box, axis=1), flips

    def decode(self, ids: np.ndarray) -> torch.Tensor:
        """The (B, res, res, 3) uint8 images of samples `ids` (read, crop, resize, flip)."""
        from .stream_cpu import JpegDecodeError

        boxes, flips = self.boxes(ids)
        jpegs = self.store.read(ids)
        try:
            return self.decoder(jpegs, boxes, flips, self.res)
        except JpegDecodeError as e:
            sample = int(ids[e.position])
            row = self.store.index[sample]
            raise DatasetError(
                f"{self.store.dir}: sample {sample} of split {self.store.split!r} ({self.store.shards[row['shard']].name}"
                f" at byte {row['offset']}): {e.message}; `fasttrain verify {self.store.dir}` checks the files, "
                f"FASTTRAIN_DECODER=reference decodes with the reference path") from None

    def _batches(self, first: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        order = self.epoch_ids()
        for b in range(first, len(self)):
            ids = order[b * self.batch_size : (b + 1) * self.batch_size]
            labels = torch.from_numpy(self.store.labels[ids].astype(np.int64))
            yield ids, self.decode(ids), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, self._start = self._start, 0
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self._batches(first):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(None)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        worker = threading.Thread(target=produce, name="fasttrain-stream-decode", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                ids, images, labels = item
                self.batch_indices = torch.from_numpy(ids)
                if self.device.type != "cpu":
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                yield images, labels
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()
