"""Live progress per epoch (rich bar on a terminal, one line per epoch otherwise) and the final table."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


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
        if not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.n_epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.steps, stats="")

    def update(self, done: int, loss: float, acc: float, imgs_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done,
                                 stats=f"loss {loss:.3f} acc {100 * acc:.2f}% {imgs_per_s:,.0f} img/s")

    def end_epoch(self, row: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.quiet:
            return
        # accuracy in percent for people; metrics.jsonl and summary.json keep fractions
        test = f" test_loss {row['test_loss']:.3f} test_acc {100 * row['test_acc']:.2f}%" if row["test_acc"] is not None else ""
        self.console.print(
            f"epoch {row['epoch']:>3}/{self.n_epochs} train_loss {row['train_loss']:.3f} train_acc "
            f"{100 * row['train_acc']:.2f}%{test} {row['epoch_s']:.1f}s {row['imgs_per_s']:,.0f} img/s", highlight=False)

    def footer(self, summary: dict) -> None:
        if self.quiet:
            return
        table = Table(title="run summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("model", "dataset", "epochs", "test_acc", "test_acc_no_tta", "tta", "train_s", "eval_s",
                    "wall_s", "train_imgs_per_s", "device", "amp", "params"):
            value = summary.get(key)
            if isinstance(value, float) and key.startswith("test_acc"):
                value = f"{100 * value:.2f}%"
            table.add_row(key, str(value))
        self.console.print(table)
