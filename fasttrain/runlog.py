"""The run's metric log: one JSON line per epoch (metrics.jsonl), a CSV copy (metrics.csv, rewritten with
the union of columns seen so far), TensorBoard event files under tb/ when tensorboard is installed, and
the per-batch learning rate (lr.csv, plotted to lr.png at the end); and each row to the experiment trackers
of `--logger` / `fit(logger=...)` (fasttrain.loggers), which get the summary's numbers when the log closes.

A write that fails (a full disk, a folder made read-only mid-run) ends the run with a RunDirError that names
the file and says the last checkpoint is intact, like a failed checkpoint write, never a raw OSError."""

from __future__ import annotations

import csv
import errno
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .checkpoint import CHECKPOINT_NAME
from .rundisk import RunDirError
from .fileio import atomic_write


class RunLog:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, loggers: list | tuple = ()):
        """Starts an empty log; a resumed run logs its checkpointed history rows again."""
        self.loggers = list(loggers)  # fasttrain.loggers: log_metrics(row, step), finalize(status)
        self.dir = Path(out_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self.rows: list[dict] = []
        with self._writing(self.jsonl):
            self.jsonl.write_text("")
        self.lrs: list[tuple[int, float]] = []
        self.tb = _tensorboard_writer(self.dir / "tb") if tensorboard else None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with self._writing(self.jsonl), open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()  # a full disk shows here, inside the guard, not at a later implicit close
        self._write_csv()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.tb.add_scalar(_tb_tag(key), value, row.get("epoch", len(self.rows)))
            self.tb.flush()
        for logger in self.loggers:
            logger.log_metrics(row, step=row.get("epoch", len(self.rows)))

    def log_lr(self, step: int, lr: float) -> None:
        """Per batch; kept in memory (a float per step) and written by `close`."""
        self.lrs.append((step, lr))

    def close(self, summary: dict | None = None) -> None:
        """Writes lr.csv, closes TensorBoard; the trackers get `summary`'s numbers (as summary/<name>, at the
        last epoch) and finish."""
        for logger in self.loggers:
            if summary is not None:
                logger.log_metrics({f"summary/{k}": v for k, v in summary.items()},
                                   step=self.rows[-1].get("epoch", len(self.rows)) if self.rows else 0)
            logger.finalize("success")
        self.loggers = []
        if self.lrs:
            text = "step,lr\n" + "".join(f"{s},{lr:.8g}\n" for s, lr in self.lrs)
            with self._writing(self.dir / "lr.csv"):
                atomic_write(self.dir / "lr.csv", lambda f: f.write(text.encode()))
        if self.tb is not None:
            for s, lr in self.lrs[:: max(1, len(self.lrs) // 2000)]:
                self.tb.add_scalar("lr", lr, s)
            self.tb.close()
            self.tb = None

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        with self._writing(self.csv):
            atomic_write(self.csv, lambda f: f.write(buf.getvalue().encode()))

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """An OSError while writing `path` becomes a RunDirError naming it and the checkpoint that survives."""
        try:
            yield
        except OSError as e:
            checkpoint = self.dir / CHECKPOINT_NAME
            why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
            kept = (f"; the last checkpoint {checkpoint} is intact: free space, then resume with "
                    f"`fasttrain run --resume {self.dir}`" if checkpoint.exists() else "; no checkpoint was saved yet")
            raise RunDirError(f"could not write {path}: {why}{kept}") from e


def _tb_tag(key: str) -> str:
    """train_loss -> loss/train, val_acc -> acc/val: groups the curves of one metric in TensorBoard."""
    for prefix in ("train_", "val_", "test_"):
        if key.startswith(prefix):
            return f"{key[len(prefix):]}/{prefix[:-1]}"
    return key


def _tensorboard_writer(path: Path):
    """A SummaryWriter, or None when tensorboard is not installed (`pip install tensorboard`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(path))
