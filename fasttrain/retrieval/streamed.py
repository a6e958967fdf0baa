"""Retrieval on a jpeg store (`--pipeline stream`, e.g. Cars196 converted with `--format jpeg`): training
images decoded from the original photos with a fresh random-resized crop and flip every epoch, evaluation
images with the resize + centre crop, both at one resolution (224 px for Cars196).

The crops come from the streaming pipeline's decode (counter-based, keyed by seed, epoch and sample), so
an epoch's images are a pure function of (seed, epoch). Each epoch's crops are decoded into one uint8 set
(Cars196's 8,054 train-class images at 224 px: 1.2 GB), which both phases' samplers (shuffled batches,
class-balanced batches) index exactly as they index a tensor dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ConfigError
from ..data.formats import read_labels
from ..data.tensor_format import read_meta
from ..pipelines import make_pipeline

DEFAULT_RES = 224


@dataclass
class StreamedPool:
    """Images of some classes from every split of a jpeg store, in a fixed order: `parts` holds, per split,
    the dataset positions taken; `labels` their labels in the same order."""

    data_dir: str
    parts: list[tuple[str, np.ndarray]]
    labels: np.ndarray
    # the last decode and its arguments: asked again (the first epoch, once to set up and once to train),
    # it is not decoded twice
    _last: tuple = field(default=(None, None), repr=False, compare=False)

    @classmethod
    def of_classes(cls, data_dir: str, classes: list[int]) -> StreamedPool:
        """All images (every split) whose label is in `classes`, as the tensor path's pooled_by_class."""
        wanted = np.asarray(sorted(classes))
        parts, labels = [], []
        for split in sorted(read_meta(data_dir)["splits"]):
            y = read_labels(data_dir, split)
            ids = np.flatnonzero(np.isin(y, wanted))
            if len(ids):
                parts.append((split, ids))
                labels.append(y[ids])
        if not parts:
            raise ConfigError(f"--data {data_dir}: no images of classes {classes[:5]}...")
        return cls(data_dir, parts, np.concatenate(labels))

    def subset(self, positions: np.ndarray) -> StreamedPool:
        """The images at `positions` of this pool (sorted positions keep the pool's order)."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        parts, start = [], 0
        for split, ids in self.parts:
            mine = positions[(positions >= start) & (positions < start + len(ids))] - start
            if len(mine):
                parts.append((split, ids[mine]))
            start += len(ids)
        return StreamedPool(self.data_dir, parts, self.labels[positions])

    def decode(self, epoch: int = 0, *, res: int, device: torch.device, seed: int, train: bool = True,
               flip: bool = True, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, res, res, 3) on `device` in the pool's order: epoch `epoch`'s random-resized crops (and
        flips) when training, else the centre crops."""
        key = (epoch, res, str(device), seed, train, flip)
        if self._last[0] == key:
            return self._last[1]
        out = []
        for split, ids in self.parts:
            pipe = make_pipeline("stream", self.data_dir, split, batch_size, device=device, shuffle=False,
                                 seed=seed, indices=ids, train=train, flip=flip, res=res)
            pipe.set_epoch(epoch)
            out += [x.clone() for x, _ in pipe]
        self._last = (key, torch.cat(out))
        return self._last[1]
