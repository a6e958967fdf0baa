"""The GPU-resident tensor pipeline: coverage, shapes, determinism, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fasttrain.pipelines.tensor import TensorPipeline


def _data(n=103):
    images = np.arange(n, dtype=np.int64)[:, None, None, None].repeat(3, 3).repeat(4, 1).repeat(4, 2)
    return (images % 256).astype(np.uint8), np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("drop_last", [False, True])
def test_exactly_once_per_epoch(drop_last):
    images, labels = _data()
    pipe = TensorPipeline(images, labels, 10, drop_last=drop_last, seed=1)
    assert len(pipe) == (10 if drop_last else 11)
    for epoch in range(2):
        pipe.set_epoch(epoch)
        seen = []
        for x, y in pipe:
            assert x.dtype == torch.uint8 and x.shape[1:] == (4, 4, 3) and y.dtype == torch.int64
            assert torch.equal(x[:, 0, 0, 0].long(), y % 256)  # images travel with their labels
            seen += y.tolist()
        if drop_last:
            assert len(seen) == 100 and len(set(seen)) == 100
        else:
            assert sorted(seen) == list(range(103))


def test_deterministic_with_seed_and_reshuffled_per_epoch():
    images, labels = _data()
    order = lambda p: torch.cat([y for _, y in p]).tolist()  # noqa: E731
    a, b = TensorPipeline(images, labels, 16, seed=3), TensorPipeline(images, labels, 16, seed=3)
    assert order(a) == order(b)
    a.set_epoch(1)
    assert order(a) != order(b)
    assert order(TensorPipeline(images, labels, 16, seed=4)) != order(b)


def test_rank_shards_are_disjoint():
    images, labels = _data(100)
    shards = [torch.cat([y for _, y in TensorPipeline(images, labels, 8, seed=0, rank=r, world_size=4)]).tolist()
              for r in range(4)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == 100
    assert len({len(TensorPipeline(images, labels, 8, rank=r, world_size=4)) for r in range(4)}) == 1


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        TensorPipeline(np.zeros((4, 2, 2, 3), np.float32), np.zeros(4, np.int64), 2)
    with pytest.raises(ValueError, match="labels"):
        TensorPipeline(np.zeros((4, 2, 2, 3), np.uint8), np.zeros(3, np.int64), 2)


@pytest.mark.gpu
def test_on_cuda_no_host_copies():
    images, labels = _data()
    pipe = TensorPipeline(images, labels, 10, device="cuda")
    x, y = next(iter(pipe))
    assert x.is_cuda and y.is_cuda
