"""Model selection and early stopping on one validation metric.

`Monitor.update(row)` reads `row[metric]` after an evaluation; it reports whether this is the best value so
far (then the loop saves best.pt) and, with patience > 0, whether `patience` evaluations in a row have
failed to improve on the best by more than `min_delta` (then the loop stops). Loss-like metrics
(names ending in 'loss') are minimised, the rest maximised.
"""

from __future__ import annotations

import math

MONITOR_METRICS = ("val_loss", "val_acc", "val_top5", "val_f1", "val_precision", "val_recall")


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


def save_best(path, model, cfg, meta: dict, *, epoch: int, monitor: Monitor, image_size) -> None:
    """best.pt: the evaluated weights (the EMA when on) with what `fasttrain eval/predict` need."""
    from .runio import atomic_torch_save

    atomic_torch_save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": epoch,
                       "monitor": monitor.state(), "classes": meta["classes"], "mean": meta["mean"],
                       "std": meta["std"], "image_size": list(image_size)}, path)
