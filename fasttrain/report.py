"""Run reports: the end-of-run artefacts of a training run (metrics in summary.json, confusion.json/.png,
lr.png, closing the logs) and `fasttrain report RUN_DIR...`: a comparison table of several runs plus an
overlay plot of their accuracy curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .outputs import claim
from .outputs import write_json as write_output_json
from .runio import UnreadableJson, read_json_object, write_json


def finish_run(summary: dict, out_dir: Path, cfg, meta: dict, final: dict, monitor, runlog, *,
               val_samples: int) -> None:
    """Adds the final test metrics and the selection result to `summary`; writes confusion.json,
    confusion.png and lr.png; closes the metric log (lr.csv, TensorBoard)."""
    from .plots import plot_confusion, plot_lr

    out_dir = Path(out_dir)
    summary.update({
        "test_top5": final["top5"], "test_precision": final["precision"], "test_recall": final["recall"],
        "test_f1": final["f1"], "optimizer": cfg.optimizer, "schedule": cfg.schedule, "ema": cfg.ema,
        "val_samples": val_samples, "monitor": monitor.state() if val_samples else None,
        "selected": "best" if val_samples and monitor.best_epoch is not None else "last",
    })
    classes = meta.get("classes") or [str(i) for i in range(len(final["confusion"]))]
    write_json(out_dir / "confusion.json", {
        "split": "test", "tta": cfg.tta, "classes": classes, "matrix": final["confusion"],
        "per_class_acc": dict(zip(classes, final["per_class_acc"])),
        "acc": final["acc"], "precision": final["precision"], "recall": final["recall"], "f1": final["f1"],
    })
    plot_confusion(final["confusion"], classes, out_dir / "confusion.png",
                   title=f"{cfg.model} on {meta.get('name', '?')}: test confusion "
                         f"(acc {100 * final['acc']:.2f}%)")
    if runlog.lrs:
        steps, lrs = zip(*runlog.lrs)
        plot_lr(list(steps), list(lrs), out_dir / "lr.png", title=f"learning rate ({cfg.schedule})")
    runlog.close(summary)


# ============================================================================ fasttrain report
COLUMNS = ("run", "model", "recipe", "dataset", "epochs", "test_acc", "test_f1", "best_val", "wall_s",
           "train_imgs_per_s", "device")


class ReportError(ValueError):
    """No run to report, or a file the report cannot use; the message names it."""


def _read_json(path: Path) -> dict:
    try:
        return read_json_object(path)
    except UnreadableJson as e:
        raise ReportError(f"{e}; the file is damaged or was edited, so this run is left out") from None


def load_run(run_dir: str | Path) -> dict:
    """summary.json (required) and metrics.jsonl (optional) of one run directory; ReportError naming the file
    when the folder is not a finished run or a file is malformed."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ReportError(f"{run_dir}: no summary.json (not a finished fasttrain run directory)")
    summary = _read_json(summary_path)
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_path}: expected a JSON object of run results, got {type(summary).__name__}")
    metrics = run_dir / "metrics.jsonl"
    history = []
    if metrics.is_file():
        for i, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ReportError(f"{metrics}, line {i}: not a JSON object; the file is damaged or was edited") from None
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), (int, float)):
                raise ReportError(f"{metrics}, line {i}: expected an object with an 'epoch' number")
            history.append(row)
    return {"dir": run_dir, "summary": summary, "history": history}


def table_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for run in runs:
        s = run["summary"]
        monitor = s.get("monitor") or {}
        rows.append({
            "run": run["dir"].name, "model": s.get("model"), "recipe": s.get("recipe"),
            "dataset": s.get("dataset"),
            "epochs": s.get("epochs"), "test_acc": s.get("test_acc"), "test_f1": s.get("test_f1"),
            "best_val": monitor.get("best") if isinstance(monitor, dict) else None, "wall_s": s.get("wall_s"),
            "train_imgs_per_s": s.get("train_imgs_per_s"), "device": s.get("device"),
        })
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and (key in ("test_acc", "test_f1") or (key == "best_val" and value <= 1)):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _acc_key(row: dict) -> float:
    acc = row["test_acc"]
    return -acc if isinstance(acc, (int, float)) else 0.0


def report(run_dirs: list[str | Path], plot_path: str | Path | None = None, *,
           json_path: str | Path | None = None, force: bool = False, console=None,
           warn=lambda msg: None) -> list[dict]:
    """Prints the comparison table (best test accuracy first) and, when `plot_path` is given, writes the
    overlay plot (accuracy against epochs and against wall-clock time); with `json_path`, the rows as JSON
    ({"writer": "fasttrain", "rows": [...]}); returns the rows. Folders that are not finished runs, or hold
    malformed files, are skipped with `warn(message)`. Both files follow the output rule (outputs.py): a
    file fasttrain did not write is replaced only with `force`."""
    from rich.console import Console
    from rich.table import Table

    from .plots import plot_overlay

    plot_target = claim(plot_path, option="--plot", force=force) if plot_path is not None else None
    json_target = claim(json_path, option="--json", force=force) if json_path is not None else None
    runs = []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except ReportError as e:
            warn(f"skipping {e}")
    if not runs:
        raise ReportError(f"none of the {len(run_dirs)} folder(s) is a finished fasttrain run (each needs a "
                          f"summary.json); pass run directories such as runs/<model>-<time>")
    rows = sorted(table_rows(runs), key=_acc_key)
    table = Table(title=f"{len(rows)} run(s)")
    for key in COLUMNS:
        text = key in ("run", "model", "recipe", "dataset", "device")
        table.add_column(key, justify="left" if text else "right")
    for row in rows:
        table.add_row(*[_fmt(k, row[k]) for k in COLUMNS])
    # piped output (no terminal): wide enough that rich does not squeeze the columns to "…"
    (console or Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)).print(table)
    if plot_target is not None:
        plot_overlay([(r["dir"].name, r["history"]) for r in runs], plot_target,
                     title="accuracy (solid: val or test, dashed: train)")
    if json_target is not None:
        write_output_json(json_target, {"rows": rows})
    return rows
