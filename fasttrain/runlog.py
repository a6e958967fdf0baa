"""The run's metric log: one JSON line per epoch (metrics.jsonl), a CSV copy (metrics.csv, rewritten with
the union of columns seen so far), TensorBoard event files under tb/ when tensorboard is installed, and
the per-batch learning rate (lr.csv, plotted to lr.png at the end)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .runio import _atomic_write


class RunLog:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True):
        """Starts an empty log; a resumed run logs its checkpointed history rows again."""
        self.dir = Path(out_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self.rows: list[dict] = []
        self.jsonl.write_text("")
        self.lrs: list[tuple[int, float]] = []
        self.tb = _tensorboard_writer(self.dir / "tb") if tensorboard else None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.tb.add_scalar(_tb_tag(key), value, row.get("epoch", len(self.rows)))
            self.tb.flush()

    def log_lr(self, step: int, lr: float) -> None:
        """Per batch; kept in memory (a float per step) and written by `close`."""
        self.lrs.append((step, lr))

    def close(self) -> None:
        if self.lrs:
            text = "step,lr\n" + "".join(f"{s},{lr:.8g}\n" for s, lr in self.lrs)
            _atomic_write(self.dir / "lr.csv", lambda f: f.write(text.encode()))
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
        _atomic_write(self.csv, lambda f: f.write(buf.getvalue().encode()))


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
