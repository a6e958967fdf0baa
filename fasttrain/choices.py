"""Every list of named choices a run can make, written once.

The config validates against these, the CLI shows them in its help, and the modules that implement a
choice (optim, evaluate, monitor, regularizers, pipelines) take their names from here. This module imports
nothing of the project, so anything may import it (the models too, for `did_you_mean`). Model-side
choices (activations, attention blocks) belong to the models.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # cuda:N names one GPU by its index
AMP_MODES = ("auto", "bf16", "fp16", "off")  # auto: bf16 where it is fast (CUDA, CPUs with AMX), else off
PIPELINES = ("tensor", "ffcv", "dali", "torchvision", "stream")
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("onecycle", "piecewise", "cosine", "step", "multistep", "htd", "linear", "constant")
TTA_MODES = ("none", "flip", "flip_translate")
PAD_MODES = ("reflect", "zero")
CLIP_MODES = ("norm", "value")
PATCHUP_MODES = ("none", "hard", "soft")
MONITOR_METRICS = ("val_loss", "val_acc", "val_top5", "val_f1", "val_precision", "val_recall")
TASKS = ("classification", "retrieval")
CHECKPOINTS = ("best", "last")  # `fasttrain eval RUN_DIR --checkpoint`: best.pt or checkpoint.pt
EVAL_SPLITS = ("test", "train", "val")
PLOT_FORMATS = ("png", "pdf", "svg")
LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")  # --logger: where metrics go besides metrics.jsonl


def did_you_mean(word: str, known: Iterable[str], *, cutoff: float = 0.6,
                 show: Callable[[str], str] = str) -> str:
    """'; did you mean x or y?' for the known names closest to a mistyped `word` (each written by `show`),
    or '' when none is close: the one spelling of the hint after every unknown name, model or option."""
    close = difflib.get_close_matches(word, list(known), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(show(c) for c in close)}?" if close else ""


def is_device(name: str) -> bool:
    """auto, cpu, cuda or cuda:N with N a GPU index."""
    if name in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = name.partition(":")
    return prefix == "cuda" and index.isdigit()


def amp_name(dtype_name: str | None) -> str:
    """One spelling of the autocast precision everywhere (header, summary.json, config.json): bf16, fp16
    or off, from a torch dtype's name ('torch.bfloat16', 'bfloat16') or None (fp32)."""
    if dtype_name is None:
        return "off"
    short = str(dtype_name).replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "off"}.get(short, short)
