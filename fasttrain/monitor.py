"""Model selection and early stopping on one validation metric.

`Monitor.update(row)` reads `row[metric]` after an evaluation; it reports whether this is the best value so
far and, with patience > 0, whether `patience` evaluations in a row have failed to improve on the best by
more than `min_delta`. Loss-like metrics (names ending in 'loss') are minimised, the rest maximised.
`ModelSelection` acts on those answers: it keeps the best weights (in memory for the final test, and as
best.pt) and ends the run early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.nn as nn

from .choices import MONITOR_METRICS

__all__ = ["MONITOR_METRICS", "ModelSelection", "Monitor"]


class Monitor:
    def __init__(self, metric: str | None = "val_acc", patience: int = 0, min_delta: float = 0.0):
        if patience < 0:
            raise ValueError(f"--early-stop: patience must be >= 0, got {patience}")
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.minimise = metric is not None and metric.endswith("loss")  # None: no val split, nothing to select
        self.best = math.inf if self.minimise else -math.inf
        self.best_epoch: int | None = None
        self.bad_evals = 0
        self.stopped_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if self.minimise:
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, row: dict) -> bool:
        """Returns True if row[metric] is a new best. Rows without the metric (no eval) are ignored."""
        value = row.get(self.metric)
        if value is None:
            return False
        if self.improved(value):
            self.best, self.best_epoch, self.bad_evals = value, row.get("epoch"), 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state(self) -> dict:
        return {"metric": self.metric, "best": self.best if math.isfinite(self.best) else None,
                "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}


class ModelSelection:
    """The weights the final test sees: with a val split, the best evaluated ones (the EMA when it is on).

    `observe(row)` after each evaluation: a new best is copied (in memory) and handed to `save_best(epoch)`,
    which writes best.pt (rank 0). `best_weights()` swaps the best copy into the model for the final test
    and puts the last weights back after, so checkpoint.pt keeps the last weights."""

    def __init__(self, monitor: Monitor, model: nn.Module, save_best: Callable[[int], None]):
        self.monitor = monitor
        self.model = model
        self.save_best = save_best
        self.best_state: dict | None = None  # checkpointed with the run, so a resume keeps it

    def observe(self, row: dict) -> None:
        if self.monitor.update(row):
            self.best_state = _copy(self.model.state_dict())
            self.save_best(row["epoch"])

    def should_stop(self, epoch: int) -> bool:
        """Early stopping after `epoch` (0-based); records the epoch in the monitor's state."""
        if not self.monitor.should_stop:
            return False
        self.monitor.stopped_epoch = epoch + 1
        return True

    @contextmanager
    def best_weights(self) -> Iterator[nn.Module]:
        if self.best_state is None:
            yield self.model
            return
        last = _copy(self.model.state_dict())
        self.model.load_state_dict(self.best_state)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(last)


def _copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}
