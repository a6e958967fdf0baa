"""Callbacks: your code at fixed points of a run, `fasttrain.fit(..., callbacks=[...])`, with Lightning's hook
names. A callback is any object with some of these methods (subclassing `Callback` is optional); each takes
the `RunState` the trainer keeps up to date:

    on_train_start(state)        before the first epoch (after a resume: before the first remaining one)
    on_train_epoch_start(state)  state.epoch (0-based) is about to run          (alias: on_epoch_start)
    on_train_batch_end(state)    after each batch: state.step, state.batch_idx, state.loss (a tensor on the
                                 device: call .item() only when you need it, it waits for the device)
                                                                                 (alias: on_step_end)
    on_train_epoch_end(state)    state.metrics is the epoch's row of metrics.jsonl   (alias: on_epoch_end)
    on_train_end(state)          state.summary is summary.json's content, written by then

Stopping: set `state.should_stop = True` (Lightning's `trainer.should_stop`) or raise `StopTraining` in any
hook. The run then ends at the end of the current epoch exactly as early stopping ends it: the final
evaluation runs, the checkpoint and summary are written, and summary.json records `stopped_by: "callback"`
and `stopped_epoch`. Any other exception from a hook ends the run as a failure, as the trainer's own would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError

HOOKS = ("on_train_start", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end", "on_train_end")
ALIASES = {"on_epoch_start": "on_train_epoch_start", "on_step_end": "on_train_batch_end",
           "on_epoch_end": "on_train_epoch_end"}


class StopTraining(Exception):
    """Raised in a callback hook: the run ends cleanly after the current epoch."""


class Callback:
    """A base class with every hook doing nothing; override the ones you need."""

    def on_train_start(self, state: RunState) -> None: ...
    def on_train_epoch_start(self, state: RunState) -> None: ...
    def on_train_batch_end(self, state: RunState) -> None: ...
    def on_train_epoch_end(self, state: RunState) -> None: ...
    def on_train_end(self, state: RunState) -> None: ...


@dataclass
class RunState:
    """What a hook sees. `model` and `optimizer` are the live objects (the model the optimiser steps, not the
    EMA); `history` holds the rows of the finished epochs."""

    config: Any
    run_dir: Path
    model: Any
    optimizer: Any
    history: list[dict]
    epoch: int = 0
    step: int = 0
    batch_idx: int = 0
    loss: Any = None
    metrics: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    should_stop: bool = False


def check_callbacks(callbacks: Any) -> list:
    """A list of objects each having at least one hook and no misspelt one (an `on_*` method no hook is)."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    known = set(HOOKS) | set(ALIASES)
    for cb in callbacks:
        methods = {m for m in dir(cb) if m.startswith("on_") and callable(getattr(cb, m))}
        unknown = sorted(methods - known)
        if unknown or not methods:
            what = f"hooks fasttrain does not call: {', '.join(unknown)}" if unknown else "no hook"
            raise ConfigError(f"callbacks: {type(cb).__name__} has {what}; the hooks are {', '.join(HOOKS)} "
                              f"(aliases {', '.join(ALIASES)})")
    return list(callbacks)


class Hooks:
    """Calls the callbacks' hooks with one RunState; a StopTraining becomes state.should_stop."""

    def __init__(self, callbacks: list, state: RunState):
        self.state = state
        self.by_hook = {h: [getattr(cb, name) for cb in callbacks for name in (h, *[a for a, t in ALIASES.items()
                                                                                     if t == h])
                            if callable(getattr(cb, name, None))] for h in HOOKS}
        self.stopped_epoch: int | None = None

    @property
    def on_batches(self) -> bool:
        """Whether any callback wants every batch (the loop skips the call otherwise)."""
        return bool(self.by_hook["on_train_batch_end"])

    def __call__(self, hook: str, **updates: Any) -> None:
        for key, value in updates.items():
            setattr(self.state, key, value)
        for fn in self.by_hook[hook]:
            try:
                fn(self.state)
            except StopTraining:
                self.state.should_stop = True

    def should_stop(self, epoch: int) -> bool:
        """At the end of `epoch` (0-based): a callback asked the run to stop."""
        if self.state.should_stop and self.stopped_epoch is None:
            self.stopped_epoch = epoch + 1
        return self.state.should_stop

    def summary_fields(self) -> dict:
        return {"stopped_by": "callback", "stopped_epoch": self.stopped_epoch} if self.stopped_epoch else {}
