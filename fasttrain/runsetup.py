"""The setup every kind of run shares (classification in train.py, retrieval in retrieval/trainer.py): where
and how the process computes, the run folder, the config resolved once and recorded, and the augmentation
and PatchUp built from the config.

The order is the same for every trainer:

    rt = build_runtime(cfg)                                   device, DDP, threads, seeds, precision, flags
    out_dir, folder = prepare_run_dir(cfg, rt, ...)           named and claimed before any data is read
    ... read the dataset's meta ...
    record_config(cfg, meta, rt, out_dir, folder, ...)        the one place the config is resolved
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint as ckpt_io, distributed, rundir
from .augment import AugmentConfig
from .config import RunConfig
from .distributed import DistContext
from .regularizers import PatchUp
from .reproducibility import set_deterministic
from .runtime import resolve_amp, resolve_device
from .steps import Precision


@dataclass
class Runtime:
    """Where and how this process computes."""

    device: torch.device
    dist: DistContext
    precision: Precision


def build_runtime(cfg: RunConfig) -> Runtime:
    """Device (cuda:LOCAL_RANK per process under torchrun), threads, seeds, autocast dtype, kernel flags."""
    dist = distributed.setup(resolve_device(cfg.device))  # torchrun/DDP, else a single process
    device = dist.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    precision = Precision(device, resolve_amp(cfg.amp, device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_deterministic(cfg.deterministic, device)
    return Runtime(device, dist, precision)


def prepare_run_dir(cfg: RunConfig, rt: Runtime, *, resume: bool, log) -> tuple[Path, rundir.RunFolder | None]:
    """The run directory, before any data is read: rank 0 names it and claims it (writable, locked, not a
    finished run or someone else's files: fasttrain.rundir) and, when resuming, checks it holds a checkpoint."""
    label = cfg.model if cfg.task == "classification" else f"{cfg.model}-{cfg.task}"
    out_dir = Path(cfg.out) if cfg.out else rundir.new_run_path(label)
    out_dir = Path(rt.dist.gather_object(str(out_dir))[0])  # rank 0 names the run
    folder = rt.dist.main_only(rundir.claim, out_dir, resume=resume, force=cfg.force, epochs=cfg.epochs,
                               init_from=cfg.init_from, log=log)
    if resume:
        rt.dist.main_only(ckpt_io.check_resumable, out_dir)
    return out_dir, folder


def record_config(cfg: RunConfig, meta: dict, rt: Runtime, out_dir: Path, folder: rundir.RunFolder | None, *,
                  resume: bool) -> None:
    """The config resolved once (rundir.resolve_config: every choice made at run time replaced by what was
    chosen); a new run's config.json written atomically by rank 0; a resume checks the dataset instead."""
    rundir.resolve_config(cfg, meta, out_dir=out_dir, device=rt.device, amp_dtype=rt.precision.dtype,
                          world_size=rt.dist.world_size, resume=resume)
    if not resume and rt.dist.is_main:
        rundir.save_config(folder, cfg)


def augment_config(cfg: RunConfig, *, decode_crops: bool) -> AugmentConfig:
    """The fused augmentation's settings; a pipeline whose decode crops (and flips) has done the crop,
    translation and flip already, so they are off here."""
    return AugmentConfig(crop_pad=0 if decode_crops else cfg.crop_pad, pad_mode=cfg.pad_mode,
                         flip=cfg.flip and not decode_crops, alternating_flip=cfg.alternating_flip,
                         cutout=cfg.cutout, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, mix_prob=cfg.mix_prob,
                         switch_prob=cfg.switch_prob)


def build_patchup(cfg: RunConfig, model: nn.Module, hw: tuple[int, int], device: torch.device) -> PatchUp | None:
    """PatchUp's feature-level mixing at the model's hidden layer, or None when off."""
    if cfg.patchup == "none":
        return None
    probe = torch.zeros(2, 3, *hw, device=device).to(memory_format=torch.channels_last)
    return PatchUp(model, probe, mode=cfg.patchup, prob=cfg.patchup_prob, alpha=cfg.patchup_alpha,
                   block=cfg.patchup_block, gamma=cfg.patchup_gamma, seed=cfg.seed + 2)
