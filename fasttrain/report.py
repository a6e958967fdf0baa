"""Run reports: the end-of-run artefacts of a training run (metrics in summary.json, confusion.json/.png,
lr.png, closing the logs) and `fasttrain report RUN_DIR...`: a comparison table of several runs plus an
overlay plot of their accuracy curves."""

from __future__ import annotations

import json
from pathlib import Path

from .outputs import claim
from .outputs import write_json as write_output_json
from .fileio import UnreadableJson, read_json_object, write_json


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
    config_path = run_dir / "config.json"  # what the run was asked to do; older or hand-made runs may lack it
    config = _read_json(config_path) if config_path.is_file() else {}
    return {"dir": run_dir, "summary": summary, "history": history, "config": config}


# Settings never shown as a distinguishing column: where the run's files went, how it was launched, and what
# COLUMNS already shows (the subsets are shown as the sample counts the run really used).
NOT_SETTINGS = {"out", "run_dir", "data", "data_identity", "force", "verify", "threads", "nproc", "nnodes",
                "node_rank", "master_addr", "master_port", "device", "logger", "tensorboard", "retrieval",
                "model", "recipe", "epochs", "train_subset", "test_subset", "model_kwargs"}
FIRST_SETTINGS = ("lr", "batch_size", "train_samples", "test_samples")  # after the model's options
MAX_SETTING_COLUMNS = 8


def run_settings(run: dict) -> tuple[dict, dict]:
    """The settings of one run that may tell it apart from others, as (the model's options, the rest): its
    model_kwargs (under their own names unless that clashes with a setting), and the samples it trained and
    tested on with its config.json's other settings."""
    config = run["config"] if isinstance(run.get("config"), dict) else {}
    model_kwargs = config.get("model_kwargs") if isinstance(config.get("model_kwargs"), dict) else {}
    options = {f"model.{k}" if k in config or k in COLUMNS else k: v for k, v in model_kwargs.items()}
    rest = {key: run["summary"].get(key) for key in ("train_samples", "test_samples")}
    rest.update({k: v for k, v in config.items() if k not in NOT_SETTINGS})
    return options, rest


def distinguishing_settings(runs: list[dict]) -> list[str]:
    """Names of the settings whose values differ among `runs` (one a run lacks counts as differing): the
    model's options first, then lr, batch size and samples, then the rest alphabetically."""
    options, rest = zip(*(run_settings(r) for r in runs))
    merged = [{**o, **r} for o, r in zip(options, rest)]
    names = {k for s in merged for k in s}
    differ = {k for k in names if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in merged}) > 1}
    first = [k for o in options for k in o] + list(FIRST_SETTINGS)
    ordered = [k for k in dict.fromkeys(first) if k in differ]
    return ordered + sorted(differ - set(ordered))


def table_rows(runs: list[dict], settings: list[str] = ()) -> list[dict]:
    """One row per run: COLUMNS, then the values of `settings` (distinguishing_settings)."""
    rows = []
    for run in runs:
        s = run["summary"]
        monitor = s.get("monitor") or {}
        options, rest = run_settings(run)
        values = {**options, **rest}
        rows.append({
            "run": run["dir"].name, "model": s.get("model"), "recipe": s.get("recipe"),
            "dataset": s.get("dataset"),
            "epochs": s.get("epochs"), "test_acc": s.get("test_acc"), "test_f1": s.get("test_f1"),
            "best_val": monitor.get("best") if isinstance(monitor, dict) else None, "wall_s": s.get("wall_s"),
            "train_imgs_per_s": s.get("train_imgs_per_s"), "device": s.get("device"),
            **{k: values.get(k) for k in settings},
        })
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and (key in ("test_acc", "test_f1") or (key == "best_val" and value <= 1)):
        return f"{100 * value:.2f}%"
    if key == "epochs" and isinstance(value, float):
        return f"{value:g}"  # 2, not 2.0; 2.5 stays
    if key in COLUMNS and isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:.4g}"  # a setting (lr 0.0004, width 0.5): its own precision, not one decimal
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _dataset_key(run: dict) -> str:
    return str(run["summary"].get("dataset") or "?")


def _rank_key(run: dict) -> tuple[str, float]:
    """Grouped by dataset (accuracies on different data do not rank against each other), best test
    accuracy first within each."""
    acc = run["summary"].get("test_acc")
    return _dataset_key(run), -acc if isinstance(acc, (int, float)) else 0.0


def report(run_dirs: list[str | Path], plot_path: str | Path | None = None, *,
           json_path: str | Path | None = None, force: bool = False, console=None,
           warn=lambda msg: None) -> list[dict]:
    """Prints the comparison table, grouped by dataset (best test accuracy first within each), with a column
    for each setting that differs among the runs (width, lr, batch size, samples, ...); when `plot_path` is
    given, writes the overlay plot (accuracy against epochs and wall-clock time, a row of panels per
    dataset) and the table shows each run's colour and marker; with `json_path`, the rows as JSON
    ({"writer": "fasttrain", "rows": [...]}); returns the rows. Folders that are not finished runs, or hold
    malformed files, are skipped with `warn(message)`. Both files follow the output rule (outputs.py): a
    file fasttrain did not write is replaced only with `force`."""
    from rich.table import Table

    from .tables import table_console

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
    settings = distinguishing_settings(runs) if len(runs) > 1 else []
    shown, hidden = settings[:MAX_SETTING_COLUMNS], settings[MAX_SETTING_COLUMNS:]
    runs.sort(key=_rank_key)
    rows = table_rows(runs, settings)
    styles = None
    if plot_target is not None:
        from .plots import MARKER_GLYPHS, plot_overlay, run_styles

        styles = run_styles(len(runs))
    datasets = list(dict.fromkeys(_dataset_key(r) for r in runs))
    title = f"{len(rows)} run(s)" + (f" on {len(datasets)} datasets, ranked within each" if len(datasets) > 1 else "")
    table = Table(title=title)
    if styles is not None:
        table.add_column("plot")
    table.add_column("#", justify="right")
    for key in (*COLUMNS, *shown):
        text = key in ("run", "model", "recipe", "dataset", "device")
        table.add_column(key, justify="left" if text else "right")
    rank = 0
    for i, (run, row) in enumerate(zip(runs, rows)):
        if i and _dataset_key(run) != _dataset_key(runs[i - 1]):
            table.add_section()
            rank = 0
        rank += 1
        cells = [str(rank), *[_fmt(k, row[k]) for k in (*COLUMNS, *shown)]]
        if styles is not None:
            colour, marker = styles[i]
            cells.insert(0, f"[{colour}]{MARKER_GLYPHS[marker]}[/]")
        table.add_row(*cells)
    console = console or table_console()
    console.print(table)
    if hidden:
        console.print(f"{len(hidden)} more setting(s) differ among these runs (in --json and config.json): "
                      f"{', '.join(hidden)}", highlight=False)
    if plot_target is not None:
        groups = [(name, [(run["dir"].name, run["history"], style) for run, style in zip(runs, styles)
                          if _dataset_key(run) == name]) for name in datasets]
        plot_overlay(groups, plot_target, title="accuracy (solid: val or test, dashed: train)")
    if json_target is not None:
        write_output_json(json_target, {"rows": rows})
    return rows
