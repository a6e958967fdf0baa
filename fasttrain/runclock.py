"""Honest run numbers: wall-clock time across resumed segments, and throughput with warm-up set apart.

A run may be stopped and resumed several times. `wall_s` in summary.json is the wall time of every segment
together (so wall_s >= train_s always, train_s being the timed epochs of all segments), and
`train_imgs_per_s` is the steady rate: the first epoch of each segment pays one-off costs (first-call
kernel selection, allocator growth, caches, and a compile that a warm-up pass did not cover) and is
reported apart as `warmup_imgs_per_s`. A run whose every epoch is a first epoch reports all of them.
"""

from __future__ import annotations

import time


class RunClock:
    """Wall time since this segment started plus the saved wall time of earlier segments; the 1-based epochs
    that began a segment. Checkpointed with the training state (state_dict / load_state_dict)."""

    optional_state = True  # checkpoints written before the clock existed resume with this segment's time only

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.earlier_s = 0.0
        self.warmup_epochs: list[int] = []

    def elapsed(self) -> float:
        return self.earlier_s + time.perf_counter() - self.started

    def start_segment(self, first_epoch: int) -> None:
        """The segment's first epoch (1-based) carries its warm-up; call after a resume restored the clock."""
        if first_epoch not in self.warmup_epochs:
            self.warmup_epochs.append(first_epoch)

    def state_dict(self) -> dict:
        return {"wall_s": self.elapsed(), "warmup_epochs": list(self.warmup_epochs)}

    def load_state_dict(self, state: dict) -> None:
        self.earlier_s = float(state["wall_s"])
        self.warmup_epochs = [int(e) for e in state["warmup_epochs"]]


def throughput(history: list[dict], warmup_epochs: list[int]) -> dict:
    """{'train_imgs_per_s': steady images/s over the epochs that did not start a segment (all epochs if
    every one did), 'warmup_imgs_per_s': images/s of the segment-starting epochs (None if none ran)}."""
    def rate(rows: list[dict]) -> float | None:
        seconds = sum(r["epoch_s"] for r in rows)
        return round(sum(r["imgs_per_s"] * r["epoch_s"] for r in rows) / seconds, 1) if seconds > 0 else None

    warm = [r for r in history if r["epoch"] in warmup_epochs]
    steady = [r for r in history if r["epoch"] not in warmup_epochs]
    return {"train_imgs_per_s": rate(steady or history) or 0.0, "warmup_imgs_per_s": rate(warm)}
