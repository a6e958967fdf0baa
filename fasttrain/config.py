"""RunConfig: every knob of a training run, validated, plus named recipes (plain override dicts).

Resolution order: dataclass defaults < the recipe (named, or the model's default) < explicit CLI options.
CLI options default to None and only override when given.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An option is out of range or contradicts another; the message names the option."""


@dataclass
class RunConfig:
    # --- what to train, on what
    model: str = "resnet9"  # zoo name (`fasttrain zoo` lists them)
    data: str = "data/cifar10"  # converted dataset directory
    out: str | None = None  # run directory (default runs/<model>-<time>)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pipeline: str = "tensor"  # data pipeline backend
    train_subset: int | None = None  # train on this many samples (stratified, seeded); None = all
    test_subset: int | None = None  # evaluate on this many test samples; None = all
    model_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for create_model
    # --- schedule of the run
    epochs: float = 24  # may be fractional: total steps = ceil(epochs * batches per epoch)
    batch_size: int = 512
    eval_every: int = 1  # evaluate on the test split every N epochs (0: only at the end)
    # --- optimiser (SGD with Nesterov momentum)
    lr: float = 0.4  # peak learning rate for the mean loss of a batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # coupled (SGD-style) L2 on weights
    norm_bias_decay: bool = False  # also decay BatchNorm parameters and biases
    bias_lr_scale: float = 1.0  # lr multiplier for BatchNorm parameters and biases (their decay is divided by it)
    label_smoothing: float = 0.0
    # --- learning-rate schedule, stepped per batch
    schedule: str = "onecycle"  # see fasttrain.optim.lr_multiplier: onecycle | piecewise | cosine | step | ...
    warmup_frac: float = 0.2  # fraction of steps spent rising to the peak
    start_lr_frac: float = 0.0  # lr at step 0, as a fraction of the peak
    end_lr_frac: float = 0.0  # lr at the last step, as a fraction of the peak
    # --- weight averaging
    lookahead: bool = False  # airbench's lookahead: every 5 steps pull weights towards a slow average
    # --- augmentation (see fasttrain.augment.reference for exact semantics)
    crop_pad: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    alternating_flip: bool = False  # each image flipped every other epoch (a fixed random phase per image)
    cutout: int = 0
    mixup: float = 0.0  # Beta alpha; 0 = off
    cutmix: float = 0.0  # Beta alpha; 0 = off
    mix_prob: float = 1.0
    # --- numerics and speed
    amp: str = "auto"  # auto (bf16 where supported) | bf16 | fp16 | off
    compile: bool = False  # torch.compile the model
    channels_last: bool = True
    tta: str = "flip"  # test-time augmentation at the final eval: none | flip | flip_translate
    # --- reproducibility
    seed: int = 0
    recipe: str | None = None  # name of the recipe this config came from (informational)
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    # --- training features: optimiser, schedule, regularizers, selection, logging
    optimizer: str = "sgd"  # sgd (Nesterov) | adam (coupled L2, seed 001) | adamw | muon (conv/linear weights)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW moment decays
    muon_lr: float = 0.02  # Muon's peak lr for conv and hidden linear weights (the rest use lr)
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5  # Newton-Schulz iterations of Muon's orthogonalisation (airbench94_muon: 3)
    muon_weight_norm: bool = False  # rescale each Muon weight to norm sqrt(out) before its step (no decay)
    clip_grad: float | None = None  # gradient clipping threshold; None = off
    clip_mode: str = "norm"  # norm (global L2 norm) | value (elementwise, seed 001)
    accum_steps: int = 1  # accumulate gradients over this many batches per optimiser step
    warmup_epochs: float | None = None  # linear warmup length in epochs (wins over warmup_frac)
    step_epochs: float = 30.0  # 'step' schedule: multiply the lr by gamma every step_epochs epochs
    milestones: list[float] = field(default_factory=list)  # 'multistep' schedule: epochs where lr *= gamma
    gamma: float = 0.1  # decay factor of step / multistep
    htd_lower: float = -6.0  # HTD schedule: lr = (1 - tanh(L + (U - L) t)) / 2 ... L (1806.01593)
    htd_upper: float = 3.0  # ... and U
    switch_prob: float = 0.5  # with mixup and cutmix both on: probability a mixed batch uses cutmix
    mix_off_epoch: int | None = None  # mixup / cutmix / PatchUp stop after this many epochs; None = never
    patchup: str = "none"  # none | hard | soft: PatchUp at a hidden feature map (2006.07794, seed 002)
    patchup_prob: float = 0.7  # probability a batch is PatchUp-mixed
    patchup_alpha: float = 2.0  # Beta(alpha, alpha) of soft PatchUp's blend weight
    patchup_block: int = 7  # side of the swapped feature-map patches
    patchup_gamma: float = 0.75  # expected share of the feature map covered by patches
    ema: bool = False  # keep an exponential moving average of the weights; eval and checkpoints use it
    ema_decay: float = 0.999  # per optimiser step
    ema_warmup: bool = True  # decay ramps as min(decay, (1+n)/(10+n))
    val_split: int = 0  # carve N train samples (stratified, seeded) into a validation split; 0 = none
    monitor: str | None = "val_acc"  # metric for best.pt and early stopping (needs --val-split; None without one)
    early_stop: int = 0  # stop after this many evaluations without improvement of `monitor`; 0 = off
    min_delta: float = 0.0  # an improvement must exceed this
    tensorboard: bool = True  # write TensorBoard event files when tensorboard is installed

    # --- runs that survive: determinism, multi-process
    deterministic: bool = False  # deterministic kernels; with --seed, CPU runs are bit-identical
    nproc: int = 1  # processes on this machine (DDP via torchrun); --batch-size stays the global batch
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)

    # --- tasks: classification (fasttrain.train) or retrieval (fasttrain.retrieval)
    task: str = "classification"  # classification | retrieval (`fasttrain run MODEL --task retrieval`)
    retrieval: dict = field(default_factory=dict)  # options of fasttrain.retrieval.trainer.RetrievalOptions

    # --- the run folder and where training starts (fasttrain.rundir, fasttrain.init_weights)
    force: bool = False  # replace the files fasttrain wrote in --out (a finished or interrupted run)
    init_from: str | None = None  # start from these weights: a checkpoint.pt or a run folder (not a resume)
    data_identity: dict | None = None  # the dataset a run started on (set by the run; a resume must match)

    def validate(self) -> RunConfig:
        def need(cond: bool, option: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}: {msg}")

        need(self.epochs > 0 and math.isfinite(self.epochs), "epochs", f"must be > 0, got {self.epochs}")
        need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, "momentum", f"must lie in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.bias_lr_scale > 0, "bias_lr_scale", f"must be > 0, got {self.bias_lr_scale}")
        need(0 <= self.label_smoothing < 1, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        need(0 <= self.warmup_frac <= 1, "warmup_frac", f"must lie in [0, 1], got {self.warmup_frac}")
        need(self.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}, got {self.amp!r}")
        need(not (self.amp == "fp16" and self.device == "cpu"), "amp", FP16_ON_CPU)
        need(self.tta in TTA_MODES, "tta", f"must be one of {TTA_MODES}, got {self.tta!r}")
        need(self.pad_mode in ("reflect", "zero"), "pad_mode", f"must be reflect or zero, got {self.pad_mode!r}")
        need(self.crop_pad >= 0, "crop_pad", f"must be >= 0, got {self.crop_pad}")
        need(self.cutout >= 0, "cutout", f"must be >= 0, got {self.cutout}")
        need(self.mixup >= 0, "mixup", f"must be >= 0, got {self.mixup}")
        need(self.cutmix >= 0, "cutmix", f"must be >= 0, got {self.cutmix}")
        need(0 <= self.mix_prob <= 1, "mix_prob", f"must lie in [0, 1], got {self.mix_prob}")
        need(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        need(self.train_subset is None or self.train_subset >= 1, "train_subset",
             f"must be >= 1, got {self.train_subset}")
        need(self.test_subset is None or self.test_subset >= 1, "test_subset", f"must be >= 1, got {self.test_subset}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(self.pipeline in PIPELINES, "pipeline", f"must be one of {PIPELINES}, got {self.pipeline!r}")
        need(self.threads is None or self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        self._validate_training_features(need)
        self._validate_resilience(need)
        self._validate_task(need)
        return self

    def _validate_task(self, need) -> None:
        need(self.task in TASKS, "task", f"must be one of {TASKS}, got {self.task!r}")
        if self.task == "retrieval":
            from .retrieval.trainer import RetrievalOptions

            RetrievalOptions.from_dict(self.retrieval)  # raises ConfigError naming the option

    def _validate_resilience(self, need) -> None:
        import os

        need(self.nproc >= 1, "nproc", f"must be >= 1, got {self.nproc}")
        need(self.batch_size % self.nproc == 0, "batch_size",
             f"{self.batch_size} must be divisible by --nproc {self.nproc} (it is the global batch, split evenly)")
        need(not (self.nproc > 1 and self.device.startswith("cuda:")), "device",
             f"{self.device} contradicts --nproc {self.nproc}: each process uses cuda:LOCAL_RANK; pass --device cuda")
        need(not (self.sync_bn and self.device == "cpu"), "sync_bn",
             "SyncBatchNorm runs only on CUDA devices in PyTorch; drop it for --device cpu")
        multi = self.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
        need(not self.sync_bn or multi, "sync_bn", "needs several processes (--nproc N or torchrun)")

    def _validate_training_features(self, need) -> None:
        from .monitor import MONITOR_METRICS
        from .optim import OPTIMIZERS
        from .regularizers import PATCHUP_MODES

        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
             f"must be two numbers in [0, 1), got {self.betas}")
        need(self.muon_lr > 0, "muon_lr", f"must be > 0, got {self.muon_lr}")
        need(0 <= self.muon_momentum < 1, "muon_momentum", f"must lie in [0, 1), got {self.muon_momentum}")
        need(self.muon_ns_steps >= 1, "muon_ns_steps", f"must be >= 1, got {self.muon_ns_steps}")
        need(not (self.alternating_flip and self.task != "classification"), "alternating_flip",
             "applies to the classification trainer only")
        need(not self.alternating_flip or self.pipeline == "tensor", "alternating_flip",
             f"needs per-sample dataset indices, which only --pipeline tensor provides (got {self.pipeline!r})")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad", f"must be > 0, got {self.clip_grad}")
        need(self.clip_mode in ("norm", "value"), "clip_mode", f"must be norm or value, got {self.clip_mode!r}")
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
        need(self.patchup in PATCHUP_MODES, "patchup", f"must be one of {PATCHUP_MODES}, got {self.patchup!r}")
        need(0 <= self.patchup_prob <= 1, "patchup_prob", f"must lie in [0, 1], got {self.patchup_prob}")
        need(self.patchup_alpha > 0, "patchup_alpha", f"must be > 0, got {self.patchup_alpha}")
        need(self.patchup_block >= 1, "patchup_block", f"must be >= 1, got {self.patchup_block}")
        need(0 < self.patchup_gamma <= 1, "patchup_gamma", f"must lie in (0, 1], got {self.patchup_gamma}")
        need(0 <= self.ema_decay < 1, "ema_decay", f"must lie in [0, 1), got {self.ema_decay}")
        need(self.val_split >= 0, "val_split", f"must be >= 0, got {self.val_split}")
        need(self.monitor is None or self.monitor in MONITOR_METRICS, "monitor", f"must be one of {MONITOR_METRICS}, got {self.monitor!r}")
        need(self.early_stop >= 0, "early_stop", f"must be >= 0, got {self.early_stop}")
        need(self.early_stop == 0 or self.val_split > 0, "early_stop",
             "needs --val-split N: early stopping never looks at the test set")
        need(self.early_stop == 0 or self.eval_every >= 1, "early_stop", "needs --eval-every >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}")
        return cls(**d)


SCHEDULES = ("onecycle", "piecewise", "cosine", "step", "multistep", "htd", "linear", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
FP16_ON_CPU = ("fp16 on a CPU has no fast kernels: every op is emulated, about 1000x slower than fp32 (minutes "
               "a step); use --amp bf16 (fast on CPUs with AMX) or --amp off")
TTA_MODES = ("none", "flip", "flip_translate")
# --- pipelines: names must match fasttrain.pipelines.PIPELINES (a test checks)
PIPELINES = ("tensor", "ffcv", "dali", "torchvision")

# --------------------------------------------------------------------------------------------- recipes
# Each recipe is a plain dict of RunConfig overrides. Units: lr is the peak rate for a batch-mean loss.
RECIPES: dict[str, dict[str, Any]] = {
    # Myrtle ResNet9, 24 epochs (David Page's DAWNBench schedule): 94% on CIFAR-10 on a GPU.
    "myrtle24": dict(
        model="resnet9", epochs=24, batch_size=512, lr=0.4, momentum=0.9, weight_decay=5e-4,
        schedule="piecewise", warmup_frac=5 / 24, label_smoothing=0.2, crop_pad=4, pad_mode="reflect",
        flip=True, cutout=8, tta="flip",
    ),
    # airbench94's hyperparameters in batch-mean units (lr 11.5 per 1024 with summed loss and its
    # momentum-adjusted scaling -> 1.5 peak; per-step decay 0.002; biases at 64x the lr).
    "airbench94": dict(
        model="airbench", epochs=9.9, batch_size=1024, lr=1.5, momentum=0.85, nesterov=True,
        weight_decay=0.002 / 1.5, norm_bias_decay=True, bias_lr_scale=64.0, label_smoothing=0.2,
        schedule="piecewise", warmup_frac=0.23, start_lr_frac=0.2, end_lr_frac=0.07, lookahead=True,
        crop_pad=2, pad_mode="reflect", flip=True, alternating_flip=True, tta="flip_translate", eval_every=0,
    ),
    # speed94: airbench94_muon's recipe (94.01% in 2.59 s on an A100) in batch-mean units. Muon (lr 0.24,
    # momentum 0.6, 3 Newton-Schulz steps, weights renormalised each step) on the conv filters; Nesterov SGD
    # on the rest: summed-loss lrs 0.67 (head) and 0.053 (biases) per sample x batch 2000 -> 1340 and
    # 1340 * 0.079; weight decay 2e-6 per sample x 2000 = 0.004 shrink per step = lr * 2.985e-6. Linear
    # decay to 0 over 8 epochs, no warmup; alternating flip + 2-px reflect translate; frozen patch-whitening
    # layer (its bias trains 3 epochs); label smoothing 0.2; logits / 256 from a unit-std head; 6-view TTA;
    # bf16 + channels_last + compile on a GPU. The Muon record drops airbench94's lookahead.
    "speed94": dict(
        model="airbench", epochs=8, batch_size=2000, optimizer="muon", muon_lr=0.24, muon_momentum=0.6,
        muon_ns_steps=3, muon_weight_norm=True, lr=1340.0, momentum=0.85, nesterov=True,
        weight_decay=0.004 / 1340.0, norm_bias_decay=True, bias_lr_scale=0.053 / 0.67, label_smoothing=0.2,
        schedule="linear", warmup_frac=0.0, end_lr_frac=0.0, lookahead=False, crop_pad=2, pad_mode="reflect",
        flip=True, alternating_flip=True, tta="flip_translate", eval_every=0, amp="auto", compile=True,
        model_kwargs={"logit_scale": 1 / 256, "head_unit_std": True},
    ),
    # The resnet9 24-epoch recipe with the same tricks: alternating flip, lookahead, 6-view TTA, compile.
    "resnet9-speed": dict(
        model="resnet9", epochs=24, batch_size=512, lr=0.4, momentum=0.9, weight_decay=5e-4,
        schedule="piecewise", warmup_frac=5 / 24, label_smoothing=0.2, crop_pad=4, pad_mode="reflect",
        flip=True, alternating_flip=True, cutout=8, lookahead=True, tta="flip_translate", amp="auto",
        compile=True,
    ),
    # The CPU quick recipe: fits convert + train + eval in 10 minutes on 2 cores (see README).
    "cpu-quick": dict(
        model="airbench", epochs=10, batch_size=512, lr=1.0, momentum=0.85, nesterov=True,
        weight_decay=0.002 / 1.0, norm_bias_decay=True, bias_lr_scale=64.0, label_smoothing=0.2,
        schedule="piecewise", warmup_frac=0.23, start_lr_frac=0.2, end_lr_frac=0.07, lookahead=True,
        crop_pad=2, pad_mode="reflect", flip=True, tta="flip_translate", eval_every=0, amp="auto",
        model_kwargs={"width": 0.5},
    ),
    # Seed 004: ResNet9 with the 1028-wide stage on CIFAR-100.
    "seed004-c100": dict(
        model="resnet9_c100", data="data/cifar100", epochs=24, batch_size=512, lr=0.4, weight_decay=5e-4,
        schedule="piecewise", warmup_frac=5 / 24, label_smoothing=0.1, crop_pad=4, cutout=8, tta="flip",
    ),
}


# speed94 for a CPU (the CPU side of benchmarks/time_to_accuracy.py): the same 2000-image optimiser
# step, accumulated over 4 micro-batches of 500 (BatchNorm statistics per 500, i.e. ghost batches),
# because on 2 cores a 500-image forward/backward runs ~1.3x more images/s than a 2000-image one (the
# activations fit the cache); fp32 (amp auto), since bf16 convolutions are slower without AMX; no compile
# (inductor gave no CPU speed-up on this net).
RECIPES["speed94-cpu"] = dict(RECIPES["speed94"], batch_size=500, accum_steps=4, compile=False)


# --- model zoo: seed 002's headline CIFAR-10 setups, named so that e.g.
# `fasttrain run resnet50b --recipe seed-sd-htd-cutmix` reproduces one row of its table. The seed does
# not state its optimiser settings; these follow its cited papers: SGD+Nesterov lr 0.1, batch 128,
# weight decay 5e-4, 200 epochs, 4-px zero-pad crop + flip; SD = stochastic depth with the paper's
# linear rule and p_L = 0.5 (1603.09382); CutMix alpha 1 applied with probability 0.5 (1905.04899);
# Cutout16 = 16-px squares. Rows without a schedule name use step decay: x0.1 at epochs 100 and 150 of
# 200 (the usual CIFAR ResNet steps). HTD uses L=-6, U=3 (RunConfig defaults, the HTD paper's).
# Each recipe joins RECIPES only if its schedule is in SCHEDULES.
def _seed002(schedule: str, model: str, *, activation: str | None = None, drop_path: float | None = None,
             cutout: int = 0, mixup: float = 0.0, cutmix: float = 0.0, image_size: int | None = None) -> dict:
    model_kwargs = {k: v for k, v in dict(activation=activation, drop_path=drop_path, image_size=image_size).items()
                    if v is not None}
    steps = dict(milestones=[100.0, 150.0], gamma=0.1) if schedule == "step" else {}
    schedule = "multistep" if schedule == "step" else schedule
    return dict(model=model, epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                schedule=schedule, warmup_frac=0.0, label_smoothing=0.0, crop_pad=4, pad_mode="zero", flip=True,
                cutout=cutout, mixup=mixup, cutmix=cutmix, mix_prob=0.5 if cutmix else 1.0, tta="none",
                model_kwargs=model_kwargs, **steps)


SEED002_RECIPES: dict[str, dict[str, Any]] = {
    "seed-step": _seed002("step", "resnet50b"),  # plain rows (ResNet34 92.64%, ResNet50b 93.18%, ...)
    "seed-mish": _seed002("step", "resnet50b", activation="mish"),
    "seed-htd": _seed002("htd", "resnet50b"),
    "seed-htd-cutmix": _seed002("htd", "resnet35b", cutmix=1.0),  # ResNet34 94.59%, ResNet35b 95.06%
    "seed-htd-cutout16": _seed002("htd", "wide_resnet18", cutout=16),  # WideResNet18 94.91%
    "seed-sd": _seed002("step", "resnet50b", drop_path=0.5),
    "seed-sd-mish": _seed002("step", "resnet50b", activation="mish", drop_path=0.5),
    "seed-sd-htd-mish": _seed002("htd", "resnet50b", activation="mish", drop_path=0.5),
    "seed-sd-cosine-mish": _seed002("cosine", "resnet50b", activation="mish", drop_path=0.5),
    "seed-sd-htd-cutout16": _seed002("htd", "resnet50b", drop_path=0.5, cutout=16),
    "seed-sd-htd-mixup0.2": _seed002("htd", "resnet50b", drop_path=0.5, mixup=0.2),
    "seed-sd-htd-mixup1": _seed002("htd", "resnet50b", drop_path=0.5, mixup=1.0),
    "seed-sd-htd-cutmix": _seed002("htd", "resnet50b", drop_path=0.5, cutmix=1.0),  # the headline 95.56%
    "seed-sd-mish-htd-cutout16": _seed002("htd", "resnet101b", activation="mish", drop_path=0.5, cutout=16),
    "seed-mish-htd-cutmix": _seed002("htd", "resnet170b", activation="mish", cutmix=1.0),
    "seed-96px-htd-cutmix": _seed002("htd", "mobilenetv2", image_size=96, cutmix=1.0),  # MobileNetV2 95.17%
}
RECIPES.update({k: v for k, v in SEED002_RECIPES.items() if v["schedule"] in SCHEDULES})


# --- training features: seed 001 / 004 recipes; seed 002's rows join RECIPES.
# Seeds 001 and 004 train the jovian-lineage ResNet9 (their code's ImageClassificationBase); that lineage
# trains with Adam (torch's coupled weight decay 1e-4 on every parameter), torch's OneCycleLR (max lr
# 0.01, 30% cosine warmup from max/25, cosine down to max/25/1e4, stepped per batch), gradient clipping
# by value 0.1, batch 400, reflect-pad-4 crop + flip. Seed 001 reports ~90% val / 89% test on CIFAR-10:
# val is carved from train here (5,000 images), so selection never sees the test set. Seed 004 reports
# accuracy 0.7434, recall 0.7434, F1 0.7425 on CIFAR-100; its epoch count is not stated (24 is ours).
_JOVIAN = dict(optimizer="adam", lr=0.01, weight_decay=1e-4, norm_bias_decay=True, schedule="onecycle",
               warmup_frac=0.3, start_lr_frac=1 / 25, end_lr_frac=1 / 25 / 1e4, clip_grad=0.1, clip_mode="value",
               batch_size=400, crop_pad=4, pad_mode="reflect", flip=True, cutout=0, label_smoothing=0.0,
               tta="none", val_split=5000, monitor="val_acc")
RECIPES["seed001"] = dict(_JOVIAN, model="resnet9", epochs=8)
RECIPES["seed004-c100"] = dict(_JOVIAN, model="resnet9_c100", data="data/cifar100", epochs=24)
RECIPES.update(SEED002_RECIPES)  # every schedule seed 002's rows name exists now


# --- seed 003: Tiny ImageNet T1-T3 and Cars196 retrieval T4.
# T1-T3 hold out 10,000 of the 100,000 train images as val for early stopping and best.pt, so
# model selection never sees the test split (the official val). Hyperparameters are ours (not measured
# on a GPU here): SGD-Nesterov, cosine after a short warmup, label smoothing 0.1, 8-px reflect crop + flip.
TASKS = ("classification", "retrieval")
_TINY = dict(data="data/tinyimagenet", batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4,
             schedule="cosine", warmup_frac=0.05, label_smoothing=0.1, crop_pad=8, pad_mode="reflect", flip=True,
             tta="flip", eval_every=1, val_split=10_000, monitor="val_acc")
RECIPES["t1-tinyimagenet"] = dict(_TINY, model="customcnn", epochs=40, cutout=16, early_stop=8)
RECIPES["t2-tinyimagenet"] = dict(_TINY, model="resnet18", epochs=60, early_stop=10)
RECIPES["t3-tinyimagenet"] = dict(_TINY, model="resnet18_attn", epochs=60, early_stop=10,
                                  model_kwargs={"attention": "both", "placement": "sequential"})
# Retrieval (any model, any dataset): phase 1 classifies the train classes, phase 2 trains the 512-d
# embedding with the multi-similarity loss (docs/retrieval.md). T4: 224 px Cars196 with the ImageNet stem
# (7x7/2 + max-pool) and a 16-px crop.
RECIPES["retrieval"] = dict(
    task="retrieval", epochs=30, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
    warmup_frac=0.05, label_smoothing=0.1, crop_pad=4, pad_mode="reflect", flip=True, tta="none", eval_every=0,
    retrieval={"embed_lr": 0.01, "m_per_class": 4, "embedding_dim": 512},
)
RECIPES["t4-cars196"] = dict(
    RECIPES["retrieval"], model="resnet18_attn", data="data/cars196", epochs=60, crop_pad=16,
    model_kwargs={"stem": "imagenet"}, retrieval=dict(RECIPES["retrieval"]["retrieval"], embed_epochs=40),
)


def default_retrieval_recipe(model: str) -> str:
    """`run MODEL --task retrieval` without --recipe: T4 for resnet18_attn, the generic recipe otherwise."""
    return "t4-cars196" if model == "resnet18_attn" else "retrieval"


def _data_alias(data: str | None) -> str | None:
    """`--data tinyimagenet` means data/tinyimagenet when there is no ./tinyimagenet directory."""
    if data and "/" not in data and not Path(data).is_dir() and (Path("data") / data).is_dir():
        return str(Path("data") / data)
    return data


def resolve(model: str, recipe: str | None, overrides: dict[str, Any]) -> RunConfig:
    """defaults < recipe (named, else the model's default recipe, if any) < explicit overrides."""
    from .models import get_entry

    try:
        entry = get_entry(model)
    except KeyError as e:
        raise ConfigError(f"MODEL: {e.args[0]}") from None
    name = recipe if recipe is not None else entry.default_recipe
    values: dict[str, Any] = {}
    if name is not None:
        if name not in RECIPES:
            raise ConfigError(f"--recipe: unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
        values.update(RECIPES[name])
    values["model"] = model
    values["recipe"] = name
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data" in values:
        values["data"] = _data_alias(values["data"])
    return RunConfig.from_dict(values).validate()
