"""Every list of named choices a run can make, written once.

The config validates against these, the CLI shows them in its help, and the modules that implement a
choice (optim, evaluate, monitor, regularizers, pipelines) take their names from here. This module imports
nothing of the project, so anything may import it (the models too, for `did_you_mean`).

It also holds the options `fasttrain run` offers beyond RunConfig's own fields (the model's keyword arguments,
the retrieval task's options) with their types and help: the CLI builds its options from them without
importing the models or the retrieval trainer (and so torch), which keeps `--help` instant.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # cuda:N names one GPU by its index
AMP_MODES = ("auto", "bf16", "fp16", "off")  # auto: bf16 where it is fast (CUDA, CPUs with AMX), else off
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("onecycle", "piecewise", "cosine", "step", "multistep", "htd", "linear", "constant")
TTA_MODES = ("none", "flip", "flip_translate")
PAD_MODES = ("reflect", "zero")
AUTO_AUGMENT = ("none", "randaugment", "trivialaugment")  # --auto-augment: torchvision's policies
CLIP_MODES = ("norm", "value")
PATCHUP_MODES = ("none", "hard", "soft")
MONITOR_METRICS = ("val_loss", "val_acc", "val_top5", "val_f1", "val_precision", "val_recall")
TASKS = ("classification", "retrieval")
CHECKPOINTS = ("best", "last")  # `fasttrain eval RUN_DIR --checkpoint`: best.pt or checkpoint.pt
EVAL_SPLITS = ("test", "train", "val")
PLOT_FORMATS = ("png", "pdf", "svg")
LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")  # --logger: where metrics go besides metrics.jsonl
ACTIVATIONS = ("relu", "mish", "swish", "gelu")  # every zoo model's --activation
ATTENTION_BLOCKS = ("both", "channel", "spatial")  # resnet18_attn's CBAM blocks
PLACEMENTS = ("sequential", "parallel")  # resnet18_attn: where the two attention blocks sit

# Model options a user sets by name (`fasttrain run MODEL --width 0.5`), stored in RunConfig.model_kwargs and
# checked by fasttrain.models.options: name -> (type, help).
MODEL_OPTIONS: dict[str, tuple[type, str]] = {
    "width": (float, "Model width multiplier (models that take one)."),
    "activation": (str, f"{' | '.join(ACTIVATIONS)} (every zoo model)."),
    "drop_path": (float, "Stochastic depth rate of the last residual block (linear in depth; residual families)."),
    "image_size": (int, "Upscale inputs to this size inside the model (mobilenetv2, efficientnet_b0; e.g. 96)."),
    "attention": (str, f"resnet18_attn: {' | '.join(ATTENTION_BLOCKS)} (CBAM blocks)."),
    "placement": (str, f"resnet18_attn: {' | '.join(PLACEMENTS)} placement of the two attention blocks."),
    "pretrained": (bool, "timm/<name> models: start from timm's pretrained weights, read from the local Hugging "
                         "Face cache (never downloaded)."),
}

# The retrieval options `fasttrain run` shows as flags, stored in RunConfig.retrieval and validated by
# fasttrain.retrieval.options.RetrievalOptions (the others through --set retrieval.KEY=VALUE or a config
# file): name -> (type, help).
RETRIEVAL_OPTIONS: dict[str, tuple[type, str]] = {
    "cls_epochs": (float, "retrieval: classification epochs before the embedding head [default: epochs]."),
    "embed_epochs": (float, "retrieval: epochs of the 512-d embedding with the multi-similarity loss "
                            "[default: epochs]."),
    "embed_lr": (float, "retrieval: peak lr of the embedding phase."),
    "m_per_class": (int, "retrieval: images per class in a batch."),
}


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


# ----------------------------------------------------------------------------- batch pipelines
@dataclass(frozen=True)
class PipelineSpec:
    """One batch pipeline of fasttrain.pipelines (the table below is the one list of them)."""

    module: str  # submodule of fasttrain.pipelines
    cls: str
    formats: tuple[str, ...]  # dataset formats it reads
    help: str
    # The decode does the random-resized crop and flip (its `flip` option), so the augmentation after it
    # must not crop, translate or flip again; evaluation iterates it (train=False: the centre crop).
    crops: bool = False


PIPELINE_SPECS: dict[str, PipelineSpec] = {
    "tensor": PipelineSpec("tensor", "TensorPipeline", ("tensor",), "whole dataset resident on the device"),
    "ffcv": PipelineSpec("ffcv", "FFCVPipeline", ("ffcv",), "ffcv.loader.Loader over a .beton"),
    "dali": PipelineSpec("dali", "DALIPipeline", ("dali",), "NVIDIA DALI file reader + JPEG decoder"),
    "torchvision": PipelineSpec("torchvision", "TorchvisionPipeline", ("dali", "tensor"),
                                "Dataset + DataLoader worker processes (baseline)"),
    "stream": PipelineSpec("stream", "StreamPipeline", ("jpeg",),
                           "JPEGs decoded per batch with the random-resized crop inside (no dataset in memory)",
                           crops=True),
}
PIPELINES = tuple(PIPELINE_SPECS)
