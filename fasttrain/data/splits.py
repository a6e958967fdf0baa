"""Which samples a run sees, and in what order: every seeded index draw of the project lives here.

- `stratified_subset`: a class-balanced subset (`--train-subset`, `--test-subset`).
- `val_split_indices` / `carve_val`: a class-balanced validation split carved out of train (`--val-split`).
- `stratified_holdout`: a class-balanced share held out as a test split (image folders without one).
- `keep_multiple`: a seeded choice of samples to keep so that their count divides by the DDP world size.
- `epoch_permutation`: the shuffled order of one epoch, a pure function of (seed, epoch), shared by every
  pipeline and the retrieval samplers so that they can be compared batch for batch and resumed anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import DatasetError

if TYPE_CHECKING:
    import torch

# Multiplies the seed before the epoch is added, so (seed, epoch) pairs never collide for epochs < 100003.
_EPOCH_STRIDE = 100_003
# Offsets the val-split generator from the subset one, so carving a val split does not reshuffle the subset.
_VAL_SEED_OFFSET = 7919


def _interleaved(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every index, class-interleaved: the k-th sample of every class (each class shuffled), then the
    (k+1)-th, ... so any prefix keeps the class proportions."""
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    depth = max(len(p) for p in per_class)
    return np.asarray([p[k] for k in range(depth) for p in per_class if k < len(p)], dtype=np.int64)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` indices with class proportions kept, sorted; all indices when n >= len(labels)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(_interleaved(labels, np.random.default_rng(seed))[:n])


def val_split_indices(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): `n_val` samples carved from train, class proportions kept, seeded; sorted."""
    labels = np.asarray(labels)
    if not 0 < n_val < len(labels):
        raise DatasetError(f"--val-split: must lie in [1, {len(labels) - 1}] for {len(labels)} train samples, "
                           f"got {n_val}; pass a smaller --val-split (0 for none)")
    val = np.sort(_interleaved(labels, np.random.default_rng(seed + _VAL_SEED_OFFSET))[:n_val])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def carve_val(labels: np.ndarray, train_idx: np.ndarray, n_val: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits the train indices `train_idx` (into `labels`) into (train_idx, val_idx), stratified, seeded."""
    if n_val <= 0:
        return train_idx, train_idx[:0]
    pos_train, pos_val = val_split_indices(np.asarray(labels)[train_idx], n_val, seed)
    return train_idx[pos_train], train_idx[pos_val]


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out share of each class: round(n * fraction), at least 1 when n >= 2."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = round(len(idx) * fraction)
        k = max(k, 1) if len(idx) >= 2 else 0
        mask[rng.permutation(idx)[:k]] = True
    return mask


def keep_multiple(n: int, multiple: int, seed: int) -> np.ndarray:
    """Sorted positions of `n - n % multiple` of `n` samples, the dropped ones drawn at seeded random."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: n - n % multiple])


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The torch generator of one epoch's shuffle: a pure function of (seed, epoch)."""
    import torch  # here: `convert` draws its hold-out through this module and never needs torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed * _EPOCH_STRIDE + epoch)
    return gen


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The shuffled order of `n` samples in `epoch`, on `device`."""
    import torch

    return torch.randperm(n, generator=epoch_generator(seed, epoch, device), device=device)
