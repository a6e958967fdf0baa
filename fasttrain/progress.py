"""Live progress per epoch (rich bar on a terminal, one line per epoch otherwise) and the final table.

Human-facing text shows accuracies as percentages; files (metrics.jsonl, summary.json) keep fractions.
The first epoch of a process is marked as warming up (its img/s includes one-off costs, see
fasttrain.runclock), and both the bar and the epoch lines carry an ETA for the whole run's training.
"""

from __future__ import annotations

import functools
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .words import number

ACCURACY_KEYS = ("test_acc", "test_acc_no_tta", "train_acc", "val_acc")
_ON_SCREEN: set[EpochProgress] = set()  # whose bar is drawn (and redrawn by rich's thread) right now


def closes_bars(function):
    """Decorates the trainer: however it ends (a stop signal, Ctrl-C twice, a diverged loss, a bug), the bar
    is taken off the screen first, so what is printed next (the resume hint, the error) starts on a line of
    its own and no bar is redrawn after it."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            for progress in list(_ON_SCREEN):
                progress.close()
    return wrapper


class EpochProgress:
    def __init__(self, n_epochs: int, steps_per_epoch: int, *, quiet: bool = False):
        self.n_epochs = n_epochs
        self.steps = steps_per_epoch
        self.quiet = quiet
        self.console = Console(file=sys.stdout, soft_wrap=True)  # piped logs: one line per line, never wrapped
        self.live = self.console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None
        self._last_log = 0.0
        self._epoch = 0
        self._epoch_t0 = 0.0
        self._first_epoch: int | None = None  # this process's first epoch carries the warm-up
        self._step_s: float | None = None  # seconds per step of the last steady epoch

    def header(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def should_log(self, batch_i: int) -> bool:
        """Read device values back (a sync) at most ~4 times a second, and on the last batch."""
        if not self.live:
            return False
        now = time.perf_counter()
        if now - self._last_log > 0.25 or batch_i + 1 == self.steps:
            self._last_log = now
            return True
        return False

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._epoch_t0 = epoch, time.perf_counter()
        if self._first_epoch is None:
            self._first_epoch = epoch
        if not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.n_epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), TextColumn("{task.fields[run_eta]}"),
            console=self.console, transient=True,
        )
        self.progress.start()
        _ON_SCREEN.add(self)
        note = "warming up (first epoch: one-off kernel selection, caches)" if self.warming_up else ""
        self.task = self.progress.add_task("train", total=self.steps, stats=note, run_eta="")

    @property
    def warming_up(self) -> bool:
        return self._epoch == self._first_epoch

    def update(self, done: int, loss: float, acc: float, imgs_per_s: float) -> None:
        if self.progress is None:
            return
        note = " (warming up)" if self.warming_up else ""
        self.progress.update(self.task, completed=done,
                             stats=f"loss {loss:.3f} acc {100 * acc:.1f}% {imgs_per_s:,.0f} img/s{note}",
                             run_eta=f"run ETA {_clock(self.run_eta(done))}")

    def run_eta(self, done: int) -> float:
        """Seconds of training left in the whole run: the remaining steps at the last steady epoch's pace
        (the current epoch's while there is none)."""
        step_s = self._step_s
        if step_s is None:
            step_s = (time.perf_counter() - self._epoch_t0) / max(done, 1)
        left = (self.steps - done) + (self.n_epochs - self._epoch - 1) * self.steps
        return max(left, 0) * step_s

    def close(self) -> None:
        """Takes the bar off the screen (it is transient) and stops its refresh thread; idempotent."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        _ON_SCREEN.discard(self)

    def end_epoch(self, row: dict) -> None:
        self.close()
        warm = self.warming_up
        if not warm:
            self._step_s = (time.perf_counter() - self._epoch_t0) / self.steps
        if self.quiet:
            return
        test = (f" test_loss {row['test_loss']:.3f} test_acc {100 * row['test_acc']:.2f}%"
                if row.get("test_acc") is not None else "")
        val = (f" val_loss {row['val_loss']:.3f} val_acc {100 * row['val_acc']:.2f}%"
               if row.get("val_acc") is not None else "")
        eta = f" | run ETA {_clock(self.run_eta(self.steps))}" if row["epoch"] < self.n_epochs else ""
        self.console.print(
            f"epoch {row['epoch']:>3}/{self.n_epochs} train_loss {row['train_loss']:.3f} train_acc "
            f"{100 * row['train_acc']:.2f}%{val}{test} {row['epoch_s']:.1f}s {row['imgs_per_s']:,.0f} img/s"
            f"{' (warm-up)' if warm else ''}{eta}", highlight=False)

    def footer(self, summary: dict) -> None:
        if self.quiet:
            return
        table = Table(title="run summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("model", "dataset", "epochs", "test_acc", "test_acc_no_tta", "tta", "train_s", "eval_s",
                    "wall_s", "train_imgs_per_s", "warmup_imgs_per_s", "device", "amp", "params"):
            value = summary.get(key)
            if isinstance(value, float) and key in ACCURACY_KEYS:
                value = f"{100 * value:.2f}%"
            elif key == "epochs" and isinstance(value, float):
                value = number(value)  # 2, not 2.0
            table.add_row(key, str(value))
        self.console.print(table)
        if summary.get("run_dir"):
            self.console.print(f"run folder: {summary['run_dir']}", highlight=False)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
