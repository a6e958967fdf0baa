"""Data pipelines: each yields (uint8 NHWC images, int64 labels) batches on the training device.

Installed as `fasttrain.pipelines`. Every pipeline has `__len__` (batches per epoch), `__iter__`,
`set_epoch(epoch)` and sees every sample exactly once per epoch (the last partial batch is kept unless
`drop_last`). Augmentation happens after, on the device, in `fasttrain.augment`.

The registry, `PIPELINES` (name -> module, class, dataset formats it reads), is the table
`choices.PIPELINE_SPECS`, so the config validates --pipeline against the same one list without importing
any pipeline; optional backends are imported only when chosen:

    tensor       tensor       whole uint8 array resident on the device (default)
    ffcv         ffcv         ffcv.loader.Loader over a .beton
    dali         dali         DALI file reader + nvJPEG ("mixed") on a GPU, CPU decoder otherwise
    torchvision  dali|tensor  Dataset + DataLoader(num_workers=2), the baseline
    stream       jpeg         jpeg store read per batch, crop + resize + flip inside the JPEG decode

Sharding (DDP): every pipeline gives each rank the same number of samples, `n // world_size`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from ..choices import PIPELINE_SPECS as PIPELINES
from ..data.errors import DatasetError
from ..data.splits import keep_multiple
from ..data.tensor_format import load_split, read_meta
from ..data.verify import check_dataset
from .tensor import TensorPipeline, resize_images


def require_format(data_dir: str | Path, pipeline: str) -> dict:
    """The dataset's meta, after checking that `pipeline` can read its format (first: a dataset of another
    format needs another convert, whatever its files) and the cheap structural check (a damaged dataset is a
    DatasetError naming the file, never a traceback mid-run)."""
    meta = read_meta(data_dir)
    fmt = meta.get("format", "tensor")
    wanted = PIPELINES[pipeline].formats
    if fmt not in wanted:
        hint = " or ".join(f"`fasttrain convert {meta.get('name', 'DATASET')} --format {w}`" for w in wanted)
        raise DatasetError(f"--data {data_dir} holds a {fmt!r} dataset, but --pipeline {pipeline} reads "
                           f"{' or '.join(repr(w) for w in wanted)} datasets: convert it with {hint} "
                           f"(into another --out directory) and pass that as --data")
    return check_dataset(data_dir, required_splits=())


def shard_indices(n: int, indices: np.ndarray | None, world_size: int, seed: int) -> np.ndarray:
    """The sample indices a pipeline draws from; for DDP cut (at seeded random) to a multiple of world_size."""
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
    if world_size > 1 and len(idx) % world_size:
        idx = idx[keep_multiple(len(idx), world_size, seed)]
    return idx


def make_pipeline(
    name: str,
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
    **options,
):
    """Build pipeline `name` over `split` of the dataset at `data_dir` (see the registry above); `options`
    go to that pipeline only (e.g. the stream pipeline's train=False for evaluation)."""
    if name not in PIPELINES:
        raise ValueError(f"--pipeline: unknown pipeline {name!r}; available: {', '.join(PIPELINES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if name == "tensor":
        require_format(data_dir, "tensor")
        arrays = load_split(data_dir, split)
        sel = slice(None) if indices is None else np.asarray(indices)
        images, labels = np.array(arrays.images[sel]), np.array(arrays.labels[sel])  # RAM copy, not the memmap
        return TensorPipeline(images, labels, batch_size, device=device, shuffle=shuffle, drop_last=drop_last,
                              seed=seed, rank=rank, world_size=world_size)
    spec = PIPELINES[name]
    cls = getattr(importlib.import_module(f"{__name__}.{spec.module}"), spec.cls)
    return cls(data_dir, split, batch_size, device=device, shuffle=shuffle, drop_last=drop_last, seed=seed,
               rank=rank, world_size=world_size, indices=indices, num_workers=num_workers, **options)


def load_split_tensors(
    name: str,
    data_dir: str | Path,
    split: str,
    *,
    device: torch.device | str = "cpu",
    indices: np.ndarray | None = None,
    batch_size: int = 1000,
    res: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split (or `indices` of it) as (uint8 NHWC, int64) tensors on `device`, in dataset order,
    decoded by pipeline `name` (so evaluation sees exactly the pixels that pipeline trains on); with `res`,
    res x res images (a pipeline with set_resolution decodes at res, the others are resized after)."""
    if name == "tensor":
        require_format(data_dir, "tensor")
        arrays = load_split(data_dir, split)
        sel = slice(None) if indices is None else np.asarray(indices)
        return (resize_images(torch.from_numpy(np.array(arrays.images[sel])).to(device), res),
                torch.from_numpy(np.array(arrays.labels[sel], dtype=np.int64)).to(device))
    pipe = make_pipeline(name, data_dir, split, batch_size, device=device, shuffle=False, indices=indices,
                         num_workers=0 if name == "torchvision" else None,
                         **({"train": False} if PIPELINES[name].crops else {}))
    if res is not None and hasattr(pipe, "set_resolution"):
        pipe.set_resolution(res)
    xs, ys = [], []
    for x, y in pipe:
        xs.append(resize_images(x, res).clone())  # clone: some backends reuse their output buffers
        ys.append(y.clone())
    return torch.cat(xs), torch.cat(ys)


def eval_split(
    name: str,
    data_dir: str | Path,
    split: str,
    *,
    device: torch.device | str = "cpu",
    indices: np.ndarray,
    res: int | None = None,
    share: slice = slice(None),
    batch_size: int = 256,
):
    """What evaluation iterates over `indices` of a split: for a pipeline that crops in its decode (stream),
    that pipeline itself over this rank's `share` of them, with the evaluation crop, decoding batch by
    batch so the split is never held whole; for the others the (images, labels) tensors of
    `load_split_tensors` (every rank holds them all and evaluates its slice)."""
    if not PIPELINES[name].crops:
        return load_split_tensors(name, data_dir, split, device=device, indices=indices, res=res)
    options = {} if res is None else {"res": res}
    return make_pipeline(name, data_dir, split, batch_size, device=device, shuffle=False,
                         indices=np.asarray(indices)[share], train=False, **options)
