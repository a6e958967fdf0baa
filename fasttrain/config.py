"""RunConfig: every knob of a training run, validated once, plus named recipes (plain override dicts).

Resolution order: dataclass defaults < recipe (named, or the model's default) < config file < explicit
options. Options default to None and override only when given. Each field's trailing comment is its help
text in `fasttrain run --help`; a `# --- ` line above a group of fields names that group's help panel.

Longer than 400 lines because the named recipes live here as data (about 200 lines of override dicts, each
with the comment saying where its numbers come from); the code itself is the dataclass, its validation and
the reading of values from text and files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import (AMP_MODES, AUTO_AUGMENT, CLIP_MODES, LOGGERS, MONITOR_METRICS, OPTIMIZERS, PAD_MODES,
                      PATCHUP_MODES, PIPELINES, SCHEDULES, TASKS, TTA_MODES, did_you_mean, is_device)
from .recipes import DEFAULT_RECIPES, RECIPE_ALIASES, RECIPES

__all__ = ["ConfigError", "RunConfig", "RECIPES", "RECIPE_ALIASES", "DEFAULT_RECIPES", "resolve", "parse_value",
           "coerce", "field_help", "did_you_mean", "recipe_name", "load_config_file", "check_against_data",
           "SCHEDULES", "AMP_MODES", "TTA_MODES", "PIPELINES", "TASKS"]


class ConfigError(ValueError):
    """An option is out of range or contradicts another; the message names the option."""


@dataclass
class RunConfig:
    # --- what to train, on what
    model: str = "resnet9"  # zoo name (`fasttrain zoo` lists them)
    recipe: str | None = None  # named recipe (default: the model's own; `fasttrain recipes` lists them)
    data: str = "data/cifar10"  # converted dataset directory (`fasttrain convert` writes one)
    out: str | None = None  # run directory (default runs/<model>-<time>)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pipeline: str = "tensor"  # data pipeline: tensor (whole dataset on the device) | ffcv | dali | torchvision | stream (a jpeg store, decoded per batch); --data must be in its format
    train_subset: int | None = None  # train on this many samples (stratified, seeded); none = all
    test_subset: int | None = None  # evaluate on this many test samples; none = all
    model_kwargs: dict = field(default_factory=dict)  # extra keyword arguments of the model (--width, --activation, ...)
    # --- schedule of the run
    epochs: float = 24  # may be fractional: total steps = ceil(epochs * batches per epoch)
    batch_size: int = 512  # images per optimiser step (the global batch with --nproc)
    eval_every: int = 1  # evaluate every N epochs (0: only at the end)
    # --- optimiser
    optimizer: str = "sgd"  # sgd (Nesterov) | adam (coupled L2) | adamw | muon (conv/linear weights)
    lr: float = 0.4  # peak learning rate for the mean loss of a batch
    lr_per_256: float | None = None  # peak lr per 256 images of an optimiser step: lr = lr_per_256 * batch_size * accum_steps / 256 (an --lr given later wins)
    momentum: float = 0.9  # SGD momentum (also Muon's auxiliary optimiser)
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = 5e-4  # coupled (SGD-style) L2 on weights
    norm_bias_decay: bool = False  # also decay BatchNorm parameters and biases
    bias_lr_scale: float = 1.0  # lr multiplier for BatchNorm parameters and biases (their decay is divided by it)
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy, in [0, 1)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW moment decays, e.g. 0.9,0.999
    muon_lr: float = 0.02  # Muon's peak lr for conv and hidden linear weights (the rest use lr)
    muon_momentum: float = 0.95  # Muon's momentum
    muon_ns_steps: int = 5  # Newton-Schulz iterations of Muon's orthogonalisation (airbench94_muon: 3)
    muon_weight_norm: bool = False  # rescale each Muon weight to norm sqrt(out) before its step (no decay)
    clip_grad: float | None = None  # gradient clipping threshold (see clip_mode); none = off
    clip_mode: str = "norm"  # norm (global L2 norm) | value (elementwise)
    accum_steps: int = 1  # accumulate gradients over this many batches per optimiser step
    # --- learning-rate schedule, stepped per batch
    schedule: str = "onecycle"  # lr schedule (after linear warmup)
    warmup_frac: float = 0.2  # fraction of steps spent rising to the peak
    warmup_epochs: float | None = None  # linear warmup length in epochs (wins over warmup_frac)
    start_lr_frac: float = 0.0  # lr at step 0, as a fraction of the peak
    end_lr_frac: float = 0.0  # lr at the last step, as a fraction of the peak
    step_epochs: float = 30.0  # 'step' schedule: multiply the lr by gamma every step_epochs epochs
    milestones: list[float] = field(default_factory=list)  # 'multistep' schedule: epochs where lr *= gamma, e.g. 100,150
    gamma: float = 0.1  # decay factor of step / multistep
    htd_lower: float = -6.0  # HTD schedule lr = (1 - tanh(L + (U - L) t)) / 2: L (1806.01593)
    htd_upper: float = 3.0  # HTD schedule: U
    # --- weight averaging
    lookahead: bool = False  # airbench's lookahead: every 5 steps pull weights towards a slow average
    ema: bool = False  # keep an exponential moving average of the weights; eval and checkpoints use it
    ema_decay: float = 0.999  # EMA decay per optimiser step
    ema_warmup: bool = True  # EMA decay ramps as min(decay, (1+n)/(10+n))
    # --- augmentation (see fasttrain.augment.reference for exact semantics)
    crop_pad: int = 4  # random crop after padding each side by this many pixels (0 = off)
    pad_mode: str = "reflect"  # padding of the random crop
    flip: bool = True  # random horizontal flip
    alternating_flip: bool = False  # each image flipped every other epoch (a fixed random phase per image; tensor pipeline)
    cutout: int = 0  # cutout square side in pixels (0 = off)
    mixup: float = 0.0  # mixup Beta alpha (0 = off)
    cutmix: float = 0.0  # CutMix Beta alpha (0 = off)
    mix_prob: float = 1.0  # probability a batch is mixed (mixup / cutmix)
    auto_augment: str = "none"  # photo policy per image, torchvision's: none | randaugment | trivialaugment (trivialaugment: TrivialAugmentWide)
    randaugment_ops: int = 2  # RandAugment: ops applied in a row to each image
    randaugment_magnitude: int = 9  # RandAugment: magnitude bin, 0-30
    color_jitter: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)  # brightness,contrast,saturation,hue ranges of torchvision's ColorJitter (one number: the first three, hue 0); 0 = off
    random_erasing: float = 0.0  # probability an image gets one rectangle erased to the mean colour (torchvision's RandomErasing)
    switch_prob: float = 0.5  # with mixup and cutmix both on: probability a mixed batch uses cutmix
    mix_off_epoch: int | None = None  # mixup / cutmix / PatchUp stop after this many epochs; none = never
    patchup: str = "none"  # PatchUp at a hidden feature map (2006.07794): none | hard | soft
    patchup_prob: float = 0.7  # probability a batch is PatchUp-mixed
    patchup_alpha: float = 2.0  # Beta(alpha, alpha) of soft PatchUp's blend weight
    patchup_block: int = 7  # side of the swapped feature-map patches
    patchup_gamma: float = 0.75  # expected share of the feature map covered by patches
    # --- resolution: progressive resizing and the test resolution (fasttrain.resolution)
    min_res: int | None = None  # train at this many pixels square until start_ramp (FFCV's progressive resizing); none: the data's own size
    max_res: int | None = None  # train at this size from end_ramp on; none: min_res
    start_ramp: int = 0  # the last epoch, counted from 0, at min_res
    end_ramp: int = 0  # the first epoch at max_res; epochs between: linear, rounded to a multiple of 32
    val_res: int | None = None  # evaluate at this many pixels square (FFCV: 256 after a 160-192 ramp); none: the data's own size
    # --- validation split, best checkpoint, early stopping
    val_split: int = 0  # carve N train samples (stratified, seeded) into a validation split; 0 = none
    monitor: str | None = "val_acc"  # metric for best.pt and early stopping (needs --val-split; None without one)
    early_stop: int = 0  # stop after this many evaluations without improvement of `monitor`; 0 = off
    min_delta: float = 0.0  # an improvement must exceed this
    # --- numerics and speed
    amp: str = "auto"  # autocast precision: auto (bf16 where supported) | bf16 | fp16 (CUDA only) | off
    compile: bool | None = None  # torch.compile the model (static shapes); none: on for CUDA, off on a CPU
    channels_last: bool = True  # channels_last memory format
    tta: str = "flip"  # test-time augmentation at the final eval
    # --- reproducibility
    seed: int = 0  # random seed of every draw (subsets, order, augmentation, init)
    threads: int | None = None  # CPU threads for torch (none: torch's default)
    deterministic: bool = False  # deterministic kernels; with a fixed seed, CPU runs are bit-identical
    # --- processes and machines
    nproc: int = 1  # processes on this machine (DDP via torchrun); batch_size stays the global batch
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    nnodes: int = 1  # machines in the job; run the same command on each with its --node-rank (torchrun's static rendezvous)
    node_rank: int = 0  # this machine's place, 0 .. nnodes-1; node 0 hosts the rendezvous and writes the run folder
    master_addr: str | None = None  # node 0's address, reachable from every node (needed with --nnodes > 1)
    master_port: int = 29500  # a free TCP port on node 0 for the rendezvous
    # --- the task: classification or retrieval (fasttrain.train, fasttrain.retrieval)
    task: str = "classification"  # classification | retrieval (Recall@K on held-out classes)
    retrieval: dict = field(default_factory=dict)  # options of the retrieval task (--cls-epochs, --embed-lr, ...)
    # --- the run folder, logging and where training starts (fasttrain.rundir, fasttrain.loggers, fasttrain.init_weights)
    force: bool = False  # replace the files fasttrain wrote in --out (a finished or interrupted run)
    verify: bool = False  # check the sha256 of every dataset file before training (reads it all once)
    tensorboard: bool = True  # write TensorBoard event files when tensorboard is installed
    logger: str = ""  # also log to these, comma-separated: tensorboard, csv, mlflow, wandb (metrics.jsonl and metrics.csv are always written)
    init_from: str | None = None  # start from these weights (not a resume): a run folder or checkpoint, a safetensors file, a torch state dict, a timm or torchvision checkpoint
    data_identity: dict | None = None  # the dataset a run started on (set by the run; a resume must match)

    def validate(self) -> RunConfig:
        """Checks every field's range, choice and consistency; raises ConfigError naming the option."""

        def need(cond: bool, option: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}: {msg}")

        for name, choices in FIELD_CHOICES.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_CHOICES:
                continue
            need(value in choices, name, f"must be one of {' | '.join(choices)}, got {value!r}"
                 f"{did_you_mean(str(value), choices)}")
        need(is_device(self.device), "device", f"must be auto, cpu, cuda or cuda:N (N a GPU index), got {self.device!r}")
        need(self.epochs > 0 and math.isfinite(self.epochs), "epochs", f"must be > 0, got {self.epochs}")
        need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, "momentum", f"must lie in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.bias_lr_scale > 0, "bias_lr_scale", f"must be > 0, got {self.bias_lr_scale}")
        need(0 <= self.label_smoothing < 1, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        need(0 <= self.warmup_frac <= 1, "warmup_frac", f"must lie in [0, 1], got {self.warmup_frac}")
        need(0 <= self.start_lr_frac <= 1, "start_lr_frac", f"must lie in [0, 1], got {self.start_lr_frac}")
        need(0 <= self.end_lr_frac <= 1, "end_lr_frac", f"must lie in [0, 1], got {self.end_lr_frac}")
        need(self.crop_pad >= 0, "crop_pad", f"must be >= 0, got {self.crop_pad}")
        need(self.cutout >= 0, "cutout", f"must be >= 0, got {self.cutout}")
        need(self.mixup >= 0, "mixup", f"must be >= 0, got {self.mixup}")
        need(self.cutmix >= 0, "cutmix", f"must be >= 0, got {self.cutmix}")
        need(0 <= self.mix_prob <= 1, "mix_prob", f"must lie in [0, 1], got {self.mix_prob}")
        self._validate_photo(need)
        need(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        need(self.train_subset is None or self.train_subset >= 1, "train_subset",
             f"must be >= 1, got {self.train_subset}")
        need(self.test_subset is None or self.test_subset >= 1, "test_subset", f"must be >= 1, got {self.test_subset}")
        need(self.threads is None or self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        self._validate_training_features(need)
        self._validate_resilience(need)
        self._validate_resolution(need)
        return self

    def _validate_photo(self, need) -> None:
        """The photo augmentations (fasttrain.augment.photo); one --color-jitter number means brightness,
        contrast and saturation, as timm's --color-jitter."""
        need(self.randaugment_ops >= 0, "randaugment_ops", f"must be >= 0, got {self.randaugment_ops}")
        need(0 <= self.randaugment_magnitude <= 30, "randaugment_magnitude",
             f"must lie in [0, 30], got {self.randaugment_magnitude}")
        jitter = tuple(float(v) for v in self.color_jitter)
        need(len(jitter) in (1, 3, 4), "color_jitter", f"must be 1, 3 or 4 numbers (brightness,contrast,saturation,"
             f"hue), got {len(jitter)}: {','.join(map(str, jitter))}")
        self.color_jitter = (jitter * 3 if len(jitter) == 1 else jitter) + (0.0,) * (4 - max(len(jitter), 3))
        need(all(v >= 0 for v in self.color_jitter), "color_jitter", f"must be >= 0, got {self.color_jitter}")
        need(self.color_jitter[3] <= 0.5, "color_jitter", f"hue must lie in [0, 0.5], got {self.color_jitter[3]}")
        need(0 <= self.random_erasing <= 1, "random_erasing", f"must lie in [0, 1], got {self.random_erasing}")
        photo = self.auto_augment != "none" or any(self.color_jitter) or self.random_erasing > 0
        need(not photo or self.task == "classification", "auto_augment", "the photo augmentations (--auto-augment, "
             "--color-jitter, --random-erasing) apply to the classification trainer only; leave them off for "
             f"--task {self.task}")

    def _validate_resolution(self, need) -> None:
        for name in ("min_res", "max_res", "val_res"):
            value = getattr(self, name)
            need(value is None or value >= 8, name, f"must be >= 8 pixels, got {value}")
        need(self.min_res is None or self.max_res is None or self.min_res <= self.max_res, "min_res",
             f"{self.min_res} must be <= --max-res {self.max_res}")
        need(0 <= self.start_ramp <= self.end_ramp, "start_ramp",
             f"must lie in [0, --end-ramp {self.end_ramp}], got {self.start_ramp}")
        need(self.lr_per_256 is None or self.lr_per_256 > 0, "lr_per_256", f"must be > 0, got {self.lr_per_256}")
        if self.lr_per_256 is not None:  # the linear scaling rule: the lr follows the images per step
            self.lr = self.lr_per_256 * self.batch_size * self.accum_steps / 256

    def _validate_resilience(self, need) -> None:
        import os  # only for WORLD_SIZE, read at validation time (torchrun sets it in each process)

        need(self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")
        need(self.batch_size % self.nproc == 0, "batch_size",
             f"{self.batch_size} must be divisible by --nproc {self.nproc} (it is the global batch, split evenly)")
        need(self.nnodes >= 1, "nnodes", f"must be >= 1, got {self.nnodes}")
        need(0 <= self.node_rank < self.nnodes, "node_rank", f"must lie in [0, {self.nnodes - 1}] (--nnodes "
             f"{self.nnodes}), got {self.node_rank}")
        need(self.nnodes == 1 or bool(self.master_addr), "master_addr",
             f"needed with --nnodes {self.nnodes}: the address of node 0 (its hostname or IP), the same on every node")
        need(1 <= self.master_port <= 65535, "master_port", f"must be a TCP port in [1, 65535], got {self.master_port}")
        world = self.nproc * self.nnodes
        need(self.batch_size % world == 0, "batch_size", f"{self.batch_size} must be divisible by the {world} "
             f"processes (--nnodes {self.nnodes} x --nproc {self.nproc}; it is the global batch, split evenly)")
        need(not (self.nproc > 1 and self.device.startswith("cuda:")), "device",
             f"{self.device} contradicts --nproc {self.nproc}: each process uses cuda:LOCAL_RANK; pass --device cuda")
        need(not (self.sync_bn and self.device == "cpu"), "sync_bn",
             "SyncBatchNorm runs only on CUDA devices in PyTorch; drop it for --device cpu")
        multi = self.nproc > 1 or self.nnodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
        need(not self.sync_bn or multi, "sync_bn", "needs several processes (--nproc N, --nnodes N or torchrun)")

    def _validate_training_features(self, need) -> None:
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
             f"must be two numbers in [0, 1), got {self.betas}")
        need(self.muon_lr > 0, "muon_lr", f"must be > 0, got {self.muon_lr}")
        unknown = [n.strip() for n in self.logger.split(",") if n.strip() and n.strip() not in LOGGERS]
        need(not unknown, "logger", f"must name some of {', '.join(LOGGERS)} (comma-separated), got "
             f"{', '.join(map(repr, unknown))}{did_you_mean(unknown[0], LOGGERS) if unknown else ''}")
        need(0 <= self.muon_momentum < 1, "muon_momentum", f"must lie in [0, 1), got {self.muon_momentum}")
        need(self.muon_ns_steps >= 1, "muon_ns_steps", f"must be >= 1, got {self.muon_ns_steps}")
        need(not (self.alternating_flip and self.task != "classification"), "alternating_flip",
             "applies to the classification trainer only; pass --no-alternating-flip")
        need(not self.alternating_flip or self.pipeline == "tensor", "alternating_flip",
             f"needs per-sample dataset indices, which only --pipeline tensor provides (got {self.pipeline!r}); "
             f"pass --no-alternating-flip to use --pipeline {self.pipeline}")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad", f"must be > 0, got {self.clip_grad}")
        need(self.accum_steps >= 1, "accum_steps", f"must be >= 1, got {self.accum_steps}")
        need(self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs",
             f"must be >= 0, got {self.warmup_epochs}")
        need(self.step_epochs > 0, "step_epochs", f"must be > 0, got {self.step_epochs}")
        need(all(m >= 0 for m in self.milestones), "milestones", f"must be epochs >= 0, got {self.milestones}")
        need(self.schedule != "multistep" or len(self.milestones) > 0, "milestones",
             "the multistep schedule needs at least one milestone epoch, e.g. --milestones 100,150")
        need(0 < self.gamma <= 1, "gamma", f"must lie in (0, 1], got {self.gamma}")
        need(self.htd_lower < self.htd_upper, "htd_lower", f"must be below htd_upper ({self.htd_upper}), "
             f"got {self.htd_lower}")
        need(0 <= self.switch_prob <= 1, "switch_prob", f"must lie in [0, 1], got {self.switch_prob}")
        need(self.mix_off_epoch is None or self.mix_off_epoch >= 1, "mix_off_epoch",
             f"must be >= 1, got {self.mix_off_epoch}")
        need(0 <= self.patchup_prob <= 1, "patchup_prob", f"must lie in [0, 1], got {self.patchup_prob}")
        need(self.patchup_alpha > 0, "patchup_alpha", f"must be > 0, got {self.patchup_alpha}")
        need(self.patchup_block >= 1, "patchup_block", f"must be >= 1, got {self.patchup_block}")
        need(0 < self.patchup_gamma <= 1, "patchup_gamma", f"must lie in (0, 1], got {self.patchup_gamma}")
        need(0 <= self.ema_decay < 1, "ema_decay", f"must lie in [0, 1), got {self.ema_decay}")
        need(self.val_split >= 0, "val_split", f"must be >= 0, got {self.val_split}")
        need(self.early_stop >= 0, "early_stop", f"must be >= 0, got {self.early_stop}")
        need(self.early_stop == 0 or self.val_split > 0, "early_stop",
             "needs --val-split N: early stopping never looks at the test set")
        need(self.early_stop == 0 or self.eval_every >= 1, "early_stop", "needs --eval-every >= 1")
        need(self.min_delta >= 0, "min_delta", f"must be >= 0, got {self.min_delta}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> RunConfig:
        """A RunConfig from plain values (a recipe, a config file, config.json): unknown keys refused with a
        suggestion, each value converted to its field's type (JSON lists become tuples where needed)."""
        return cls(**{k: coerce(k, v, source=source) for k, v in d.items()})


# Fields whose value is one of a fixed list (validate checks them; `run --help` shows them).
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "pipeline": PIPELINES, "schedule": SCHEDULES, "pad_mode": PAD_MODES, "auto_augment": AUTO_AUGMENT, "amp": AMP_MODES, "tta": TTA_MODES,
    "optimizer": OPTIMIZERS, "clip_mode": CLIP_MODES, "patchup": PATCHUP_MODES, "monitor": MONITOR_METRICS,
    "task": TASKS,
}
OPTIONAL_CHOICES = ("monitor",)  # None: no val split, so nothing to monitor
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)


# ------------------------------------------------------------------------------ values from text and files
def _unknown_field(name: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: unknown setting {name!r}{did_you_mean(name, FIELDS)} "
                       f"(`fasttrain run --help` lists every setting)")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def coerce(name: str, value: Any, *, source: str = "config") -> Any:
    """`value` (from JSON, YAML or TOML) as field `name`'s type; ConfigError naming the field otherwise."""
    if name not in FIELDS:
        raise _unknown_field(name, source)
    tp, optional = _base_type(FIELD_TYPES[name])
    where = f"{source}: {name}"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be empty (null)")
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        if isinstance(value, bool):
            return value
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif origin is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # fit(out=Path(...), data=...) from Python
            return os.fspath(value)
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in value):
            return origin(float(v) for v in value)
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}: expected {_type_word(name)}, got {value!r}")


def _type_word(name: str) -> str:
    tp, optional = _base_type(FIELD_TYPES[name])
    origin = typing.get_origin(tp) or tp
    word = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "numbers separated by commas", list: "numbers separated by commas",
            dict: "a JSON object such as {\"width\": 0.5}"}[origin]
    return f"{word} (or none)" if optional else word


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_value(name: str, text: str, *, source: str | None = None) -> Any:
    """A command-line string as field `name`'s type: `--set field=value` and list options such as
    `--milestones 100,150` or `--betas 0.9,0.99`."""
    source = source or f"--{name.replace('_', '-')}"
    if name not in FIELDS:
        raise _unknown_field(name, source)
    tp, optional = _base_type(FIELD_TYPES[name])
    origin = typing.get_origin(tp) or tp
    s = text.strip()
    if optional and s.lower() in ("none", "null", ""):
        return None
    try:
        if origin is bool:
            if s.lower() in _TRUE + _FALSE:
                return s.lower() in _TRUE
            raise ValueError
        if origin is int:
            return int(s)
        if origin is float:
            return float(s)
        if origin is str:
            return s
        if origin in (tuple, list):
            items = json.loads(s) if s.startswith("[") else [p for p in s.split(",") if p.strip()]
            return origin(float(p) for p in items)
        if origin is dict:
            value = json.loads(s)
            if isinstance(value, dict):
                return value
            raise ValueError
    except ValueError:
        pass
    raise ConfigError(f"{source}: expected {_type_word(name)}, got {text!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file, e.g. one written by
    `fasttrain run --print-config` or a run's config.json; each checked against its field's type."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; write one with `fasttrain run MODEL --print-config > run.yaml`")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"--config {path}: expected a .yaml, .yml, .toml or .json file")
    try:
        text = path.read_text()
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # optional: TOML and JSON files need nothing beyond the standard library
            except ImportError:
                raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); or use a "
                                  f".toml or .json file") from None
            values = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib  # Python >= 3.11 (imported here so 3.10 still runs everything else)

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except ConfigError:
        raise
    except Exception as e:  # unreadable bytes, or the parsers' own errors (YAMLError, TOMLDecodeError, JSONDecodeError)
        raise ConfigError(_parse_error(path, suffix, e)) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings (field: value), got "
                          f"{type(values).__name__}")
    return {k: coerce(k, v, source=f"--config {path}") for k, v in values.items()}


def _parse_error(path: Path, suffix: str, e: Exception) -> str:
    """`--config FILE:LINE:COLUMN: not valid YAML: what the parser expected; what to do` from any parser's error."""
    kind = suffix[1:].upper().replace("YML", "YAML")
    if isinstance(e, UnicodeDecodeError):
        return f"--config {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8"
    mark = getattr(e, "problem_mark", None)  # PyYAML: 0-based line and column, the problem and its context
    if mark is not None:
        where, what = (mark.line + 1, mark.column + 1), " ".join(filter(None, (getattr(e, "problem", None),
                                                                              getattr(e, "context", None))))
    elif getattr(e, "lineno", None) is not None and getattr(e, "colno", None) is not None:  # json (and tomllib >= 3.14)
        where, what = (e.lineno, e.colno), getattr(e, "msg", None) or str(e)
    else:  # tomllib < 3.14: "Invalid value (at line 2, column 10)"
        found = re.search(r"\s*\(at line (\d+), column (\d+)\)", str(e))
        where, what = ((int(found[1]), int(found[2])), str(e)[: found.start()]) if found else (None, str(e))
    what = re.sub(r"\s*\(at line \d+, column \d+\)|:? line \d+ column \d+ \(char \d+\)", "", what.splitlines()[0])
    at = f":{where[0]}:{where[1]}" if where else ""
    return (f"--config {path}{at}: not valid {kind}: {what}; fix the file there (`fasttrain run MODEL --print-config` "
            "prints a valid one)")


def field_help() -> dict[str, tuple[str, str]]:
    """{field: (its trailing comment, the `# --- ` section it sits in)} read from RunConfig's source, so the
    comments above are the CLI's help and are written once."""
    out: dict[str, tuple[str, str]] = {}
    section = "settings"
    for line in inspect.getsource(RunConfig).splitlines():
        head = re.match(r"\s+# --- (.*)", line)
        if head:
            section = head.group(1).split("(")[0].strip()
            continue
        m = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if m and m.group(1) in FIELDS:
            out[m.group(1)] = ((m.group(2) or "").strip(), section)
    return out

FP16_ON_CPU = ("fp16 on a CPU has no fast kernels: every op is emulated, about 1000x slower than fp32 (minutes "
               "a step); use --amp bf16 (fast on CPUs with AMX) or --amp off")


def recipe_name(name: str) -> str:
    """The recipe's current name (old names map through RECIPE_ALIASES); ConfigError with a suggestion
    when it is unknown."""
    name = RECIPE_ALIASES.get(name, name)
    if name not in RECIPES:
        raise ConfigError(f"--recipe: unknown recipe {name!r}{did_you_mean(name, [*RECIPES, *RECIPE_ALIASES])} "
                          f"(`fasttrain recipes` lists them)")
    return name


def default_recipe(model: str, task: str | None = None) -> str | None:
    """The recipe `run MODEL` uses without --recipe: the model's own, or with --task retrieval the Cars196
    retrieval recipe for resnet18_attn and the generic retrieval recipe otherwise."""
    if task == "retrieval":
        return "cars196-retrieval" if model == "resnet18_attn" else "retrieval"
    return DEFAULT_RECIPES.get(model)


def default_retrieval_recipe(model: str) -> str:
    return default_recipe(model, "retrieval")


def _data_alias(data: str | None) -> str | None:
    """`--data tinyimagenet` means data/tinyimagenet when there is no ./tinyimagenet directory."""
    if data and "/" not in data and not Path(data).is_dir() and (Path("data") / data).is_dir():
        return str(Path("data") / data)
    return data


_MERGED = ("model_kwargs", "retrieval")  # dict fields: each layer updates the keys it names


def resolve(model: str | None, recipe: str | None, overrides: dict[str, Any], *,
            file_values: dict[str, Any] | None = None) -> RunConfig:
    """defaults < recipe (named, else the model's default recipe, if any) < config file < explicit
    overrides (None values are 'not given'); validated once."""
    file_values = dict(file_values or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    model = model or given.get("model") or file_values.get("model")
    if not model:
        raise ConfigError("MODEL: missing; name a model (`fasttrain zoo` lists them) or give `model:` in --config")
    task = given.get("task") or file_values.get("task")
    name = recipe or given.get("recipe") or file_values.get("recipe") or default_recipe(model, task)
    layers = [RECIPES[recipe_name(name)] if name else {}, file_values, given]
    values: dict[str, Any] = {}
    for layer in layers:
        if layer.get("lr") is not None and "lr_per_256" not in layer:
            values["lr_per_256"] = None  # an lr given after a recipe's lr per 256 images wins over it
        for key, value in layer.items():
            values[key] = {**values.get(key, {}), **value} if key in _MERGED and value is not None else value
    values["model"] = model
    values["recipe"] = recipe_name(name) if name else None
    if "data" in values:
        values["data"] = _data_alias(values["data"])
    return RunConfig.from_dict(values).validate()


def check_against_data(cfg: RunConfig, meta: dict[str, Any]) -> None:
    """Settings that need the dataset's meta.json to check (image size, class count)."""
    h, w = meta["shape"][:2]
    if cfg.cutout > min(h, w):
        raise ConfigError(f"--cutout: {cfg.cutout} px is larger than the {h}x{w} images of {cfg.data}; use at most "
                          f"{min(h, w)} (about half the side is usual, e.g. {min(h, w) // 4 * 2 or 1})")
    if cfg.crop_pad > max(h, w):
        raise ConfigError(f"--crop-pad: {cfg.crop_pad} px is larger than the {h}x{w} images of {cfg.data}")
