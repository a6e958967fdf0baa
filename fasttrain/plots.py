"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .outputs import Target, write_figure  # noqa: E402


def _save(fig, path: str | Path | Target) -> None:
    """Written atomically and signed (outputs.py); a `Target` follows the output rule, a plain path (a run
    folder's own plot) is replaced. The format is the file name's suffix."""
    try:
        write_figure(path, fig)
    finally:
        plt.close(fig)


def plot_curves(history: list[dict], path: str | Path | Target, title: str = "") -> None:
    """Loss (left) and accuracy (right) per epoch: train, and val / test where evaluated."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax, label in (("train_loss", ax_loss, "train"), ("train_acc", ax_acc, "train")):
        ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
    for split, marker in (("val", "^"), ("test", "s")):
        for key, ax in ((f"{split}_loss", ax_loss), (f"{split}_acc", ax_acc)):
            pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no 1.25 on an axis of whole epochs
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_lr(steps: list[int], lrs: list[float], path: str | Path | Target, title: str = "") -> None:
    """The learning rate of every batch (the first param group's)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, lrs)
    ax.set(xlabel="step (batch)", ylabel="learning rate", title=title or "learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path | Target, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted); counts written in the
    cells up to 20 classes, tick labels up to 50."""
    import numpy as np

    cm = np.asarray(matrix, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(cm)
    side = min(16, max(5, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 50:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8 if n > 20 else 9)
        ax.set_yticks(range(n), classes, fontsize=8 if n > 20 else 9)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    _save(fig, path)


# A run's look in the overlay plot, repeated in the report's table: 20 colours (tab20, pairs of a dark and
# a light shade, darks first so that up to 10 runs get 10 clearly different ones), then the next marker.
MARKER_GLYPHS = {"o": "●", "s": "■", "^": "▲", "D": "◆", "v": "▼", "P": "✚", "X": "✖", "*": "★"}


def run_styles(n: int) -> list[tuple[str, str]]:
    """n distinct (colour as #rrggbb, marker) pairs; no two runs look alike up to 160 runs, beyond which
    the pairs repeat."""
    from matplotlib.colors import to_hex

    tab20 = plt.get_cmap("tab20").colors
    colours = [to_hex(c) for c in tab20[0::2] + tab20[1::2]]
    markers = list(MARKER_GLYPHS)
    return [(colours[i % 20], markers[(i // 20) % len(markers)]) for i in range(n)]


OverlayRun = tuple[str, list[dict], tuple[str, str]]  # label, metrics.jsonl rows, (colour, marker)


def overlay_figure(groups: list[tuple[str, list[OverlayRun]]], title: str = ""):
    """The figure of plot_overlay: a row per dataset, accuracy against epochs (left) and against training
    wall-clock time (right); val (or test) solid, train dashed; one legend entry per run, outside the
    axes on the right, in the order given (the report's table order)."""
    from matplotlib.lines import Line2D

    biggest = max((len(runs) for _, runs in groups), default=1)
    columns = 1 if biggest <= 24 else 2  # legend columns: each about 16 characters of run name wide
    row_height = max(4.0, 0.2 * -(-biggest // columns) + 1.0)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13 + 3 * columns, row_height * len(groups)),
                             squeeze=False, layout="constrained")
    for (dataset, runs), (ax_epoch, ax_time) in zip(groups, axes):
        handles = []
        for label, history, (colour, marker) in runs:
            clock, elapsed = {}, 0.0
            for r in history:
                elapsed += float(r.get("epoch_s") or 0.0)
                clock[r["epoch"]] = elapsed
            for key, style in (("val_acc", "-"), ("test_acc", "-"), ("train_acc", "--")):
                if key == "test_acc" and any(r.get("val_acc") is not None for r in history):
                    continue  # the run selected on val: its per-epoch curve is val
                pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
                if not pts:
                    continue
                look = dict(color=colour, marker=marker if style == "-" else None, markersize=4, lw=1.2)
                ax_epoch.plot(*zip(*pts), style, **look)
                ax_time.plot([clock[e] for e, _ in pts], [a for _, a in pts], style, **look)
            handles.append(Line2D([], [], color=colour, marker=marker, markersize=5, label=label))
        where = f"{dataset}: " if len(groups) > 1 else ""
        ax_epoch.set(xlabel="epoch", ylabel="accuracy", title=f"{where}per epoch")
        ax_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_time.set(xlabel="training time (s, evaluation excluded)", ylabel="accuracy",
                    title=f"{where}per wall-clock second")
        for ax in (ax_epoch, ax_time):
            ax.grid(alpha=0.3)
        ax_time.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                       fontsize=8, ncols=columns, title="run (table order)", title_fontsize=8)
    fig.suptitle(title or "accuracy")
    return fig


def plot_overlay(groups: list[tuple[str, list[OverlayRun]]], path: str | Path | Target, title: str = "") -> None:
    """Accuracy curves of several runs, grouped by dataset (overlay_figure), written to `path`."""
    _save(overlay_figure(groups, title), path)


def plot_lr_range(lrs, losses, smoothed, found: dict, path: str | Path | Target, title: str = "") -> None:
    """The lr range test (fasttrain.lr_find): loss against lr on a log axis, raw and smoothed, with the
    steepest-descent and min/10 suggestions marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, color="0.75", lw=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed")
    for key, color in (("steepest", "C3"), ("min_over_10", "C2")):
        if found.get(key) is not None:
            ax.axvline(found[key], color=color, ls="--", label=f"{key.replace('_over_', '/')} {found[key]:.2g}")
    top = min(max(smoothed[0], min(smoothed)) * 1.5, max(losses))  # the divergence would hide the curve
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title=title, ylim=(min(losses) * 0.95, top))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)
