"""train(cfg) -> summary: the classification training loop, readable top to bottom.

Setup is a handful of builders (runtime, run directory, data, model, optimisation, augmentation sampler,
records); then the epoch loop: augment on the device, one `TrainStep` call per batch (lr, AMP forward + loss,
backward, EMA, lookahead), evaluation outside the timed region, a checkpoint per epoch. A stop signal takes
the one stop path at the end: save where the run stands, raise RunInterrupted. Then the final evaluation (TTA) and the run directory's
summary, report and plots. Only the entry points import this module (cli's one launch path and the Python
API, fasttrain.api); the pieces it uses live below it.

About 450 lines: `train()` itself is ~100 lines; the rest are its builders, each a short function with one
job, kept in this file so the whole setup reads in order beside the loop that uses it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint as ckpt_io, distributed, rundisk, stopping
from .augment import AugmentSampler, augment_batch, backend_for, norm_constants, normalize
from .augment.photo_config import PhotoConfig
from .config import RunConfig
from .data.formats import read_labels
from .data.splits import carve_val, stratified_subset
from .data.tensor_format import read_meta
from .data.verify import check_dataset
from .ema import ModelEma
from .evaluate import evaluate, evaluate_batches, prefixed
from .models import create_model
from .monitor import ModelSelection, Monitor
from .optim import Lookahead, build_optimizer
from .pipelines import PIPELINES, eval_split, load_split_tensors, make_pipeline
from .progress import EpochProgress, closes_bars
from .regularizers import PatchUp
from .report import finish_run
from .resolution import ResolutionSchedule, schedule_from
from .fileio import write_json
from . import rundir  # run folder: lock, refusals, failed-start cleanup, resolved config.json
from .init_weights import load_init_weights
from .runclock import RunClock, throughput
from .runsetup import (Runtime, augment_config, build_patchup, build_runtime, prepare_run_dir,
                       record_config)
from .runlog import RunLog
from .callbacks import Hooks, RunState
from .loggers import open_loggers
from .runtime import (check_model_fits, compile_model, compile_warmup, compiled_graphs, device_name, sync)
from .steps import EpochTally, TrainStep
from .tasks import ClassificationTask

if TYPE_CHECKING:
    from .augment.photo import PhotoAugment


# ============================================================================ the run
@rundir.releases_run_folder  # the folder claimed below is released at exit; a failed start leaves nothing
@closes_bars
def train(cfg: RunConfig, *, quiet: bool = False, resume: bool = False, callbacks: list | tuple = (),
          loggers: list | tuple = ()) -> dict:
    """Trains per `cfg`; with resume=True continues the run in cfg.out from its checkpoint. `callbacks` and
    `loggers` are objects given to fasttrain.fit (fasttrain.callbacks, fasttrain.loggers)."""
    cfg.validate()
    clock = RunClock()  # wall time across resumed segments; which epochs carry a warm-up
    rt = build_runtime(cfg)
    quiet = quiet or not rt.dist.is_main
    log = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    out_dir, folder = prepare_run_dir(cfg, rt, resume=resume, log=log)
    data = build_data(cfg, rt)
    record_config(cfg, data.meta, rt, out_dir, folder, resume=resume)
    model, forward = build_model(cfg, data, rt, out_dir)
    if cfg.init_from and not resume:  # weights only (after any data-based init); a resume restores its own
        load_init_weights(model, cfg.init_from, data.num_classes, log)
    optim = build_optimisation(cfg, model, forward, data, rt)
    sampler = build_sampler(cfg, data, rt)
    photo = build_photo(cfg, data, rt)  # RandAugment, colour jitter, erasing: before the fused op
    records = build_records(cfg, model, optim, data, rt, out_dir, clock, sampler, loggers)
    pos = records.state.restore() if resume else ckpt_io.Position()
    clock.start_segment(pos.epoch + 1)  # this segment's first epoch carries its warm-up
    optim.train_step.step, train_s, history = pos.step, pos.train_s, pos.history  # a resume continues all three
    records.selection.best_state = pos.extra.get("best_state")
    for row in history:
        records.runlog.log(row)
    if resume and not quiet:
        print(f"resuming {out_dir} at step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch})", flush=True)
    schedule = schedule_from(cfg.min_res, cfg.max_res, cfg.start_ramp, cfg.end_ramp)  # progressive resizing
    compile_s = warm_up_compile(cfg, model, forward, data, optim, rt, first_epoch=pos.epoch, schedule=schedule)
    progress = EpochProgress(optim.n_epochs, optim.steps_per_epoch, quiet=quiet)
    progress.header(run_header(cfg, data, rt, model))
    hooks = Hooks(callbacks, RunState(cfg, out_dir, model, optim.train_step.optimizer, history))  # fit(callbacks=)
    hooks("on_train_start", epoch=pos.epoch, step=optim.train_step.step)
    sentinel = stopping.Sentinel(rt.dist, rt.device, checkpoint=records.state.path,
                                   steps_per_epoch=optim.steps_per_epoch)  # stop signals, NaN guard

    def save(epoch: int, batch: int = 0, tally: EpochTally | None = None) -> None:  # atomic; collective under DDP
        records.state.save(epoch=epoch, batch=batch, step=optim.train_step.step, history=history, train_s=train_s,
                     epoch_acc=tally.sums() if tally else None, extra={"best_state": records.selection.best_state})

    stop_at: tuple[int, int, EpochTally | None] | None = None  # where a stop signal found the run
    graphs_before = compiled_graphs()
    for epoch in range(pos.epoch, optim.n_epochs):
        # ----------------------------------------------------------------- one epoch (timed)
        set_epoch(model, data.pipeline, epoch, schedule)
        mix = cfg.mix_off_epoch is None or epoch < cfg.mix_off_epoch  # mixing off after epoch N
        sync(rt.device)
        tally = EpochTally.start(rt.device, pos, epoch)  # zeros, unless resuming inside this epoch
        progress.start_epoch(epoch)
        hooks("on_train_epoch_start", epoch=epoch)
        for batch_i, (xb, yb) in enumerate(data.pipeline, start=start_at(data.pipeline, tally.skip)):
            if optim.train_step.done:
                break
            if batch_i < tally.skip:  # batches done before a mid-epoch checkpoint
                continue
            inputs, targets, mixed = augment(xb, yb, sampler, data, rt, mix=mix, epoch=epoch, photo=photo,
                                             batch=batch_i)
            out = optim.train_step(inputs, targets, end_of_epoch=batch_i + 1 == optim.steps_per_epoch,
                              mix_features=mix and not mixed)  # PatchUp only on batches not mixed already
            records.runlog.log_lr(optim.train_step.step - 1, out.lr)
            tally.add(out, len(inputs))
            if hooks.on_batches:
                hooks("on_train_batch_end", step=optim.train_step.step, batch_idx=batch_i, loss=out.loss.detach())
            if progress.should_log(batch_i):
                progress.update(batch_i + 1, *tally.means(), tally.rate())
            if sentinel.should_stop(out.loss, optim.train_step.step, at_boundary=out.stepped):
                stop_at = (epoch, batch_i + 1, tally)
                break
        if stop_at is not None:
            break
        sync(rt.device)
        sentinel.check()  # a non-finite loss stops the run before eval or saving
        epoch_s = tally.elapsed_s()
        train_s += epoch_s
        # ----------------------------------------------------------------- eval (not timed), log, checkpoint
        row = epoch_row(cfg, epoch, tally, epoch_s, optim, records, data, rt, last=epoch == optim.n_epochs - 1)
        history.append(row)
        records.runlog.log(row)
        progress.end_epoch(row)
        hooks("on_train_epoch_end", metrics=row)
        if records.selection.should_stop(epoch) or hooks.should_stop(epoch):  # early stopping; a callback's stop
            break
        if sentinel.requested_anywhere():
            stop_at = (epoch + 1, 0, None)
            break
        save(epoch + 1)
    if stop_at is not None:  # the one stop path: save where the run stands, exit with a resume hint
        sentinel.check()
        save(*stop_at)
        raise sentinel.interrupt(out_dir, epoch, optim.train_step.step)
    sentinel.close()
    recompiles = compiled_graphs() - graphs_before  # graphs compiled inside the timed epochs (0 is right)

    # --- final evaluation with TTA (not timed), checkpoint, summary, report, plots
    t_eval = time.perf_counter()
    with records.selection.best_weights() as tested:  # with a val split: the model selected on val (best.pt)
        final = run_evaluate(tested, data, data.test, rt, tta=cfg.tta, confusion=True)
        plain = final if cfg.tta == "none" else run_evaluate(tested, data, data.test, rt)
    eval_s = time.perf_counter() - t_eval
    save(optim.n_epochs)  # checkpoint.pt keeps the last weights
    summary = build_summary(cfg, data, rt, model, final, plain, steps=optim.train_step.step, history=history,
                            train_s=train_s, eval_s=eval_s, compile_s=compile_s, recompiles=recompiles,
                            warmup_epochs=clock.warmup_epochs,
                            wall_s=clock.elapsed())
    summary["run_dir"] = str(out_dir)
    summary.update(hooks.summary_fields())  # a callback's stop, recorded as early stopping's is
    if rt.dist.is_main:  # only rank 0 writes the summary, report and plots
        write_outputs(summary, cfg, data, final, records, history, out_dir)
        progress.footer(summary)
    # No rank exits (tearing its process group down) while rank 0 still writes: a rank that failed in its
    # teardown would make torchrun kill rank 0 half-way through the run folder.
    rt.dist.wait_for_all()
    hooks("on_train_end", summary=summary)
    return summary


# ============================================================================ setup
@dataclass
class RunData:
    """The batches to train on and the evaluation splits, held on the device as uint8 NHWC."""

    meta: dict
    pipeline: object  # yields uint8 NHWC (images, labels) batches on the device
    n_train: int
    # (images, labels) on the device, or a pipeline that decodes the split batch by batch (stream)
    test: tuple[torch.Tensor, torch.Tensor] | object
    val: tuple[torch.Tensor, torch.Tensor] | object | None  # carved from train; selection never sees test
    train_idx: np.ndarray
    scale: torch.Tensor  # normalisation: x * scale + bias
    bias: torch.Tensor
    crops: bool = False  # the pipeline's decode does the random crop and flip (images of every size)
    n_test: int = 0  # samples in test and val (a streamed split holds only this rank's share)
    n_val: int = 0

    @property
    def hw(self) -> tuple[int, int]:
        if self.crops:  # stored images of every size, decoded to the pipeline's resolution
            return (self.pipeline.res, self.pipeline.res)
        return tuple(self.meta["shape"][:2])

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]


def build_data(cfg: RunConfig, rt: Runtime) -> RunData:
    """Seeded stratified subsets, a val split carved from train, the `cfg.pipeline` backend's batches
    (global batches or this rank's shard under DDP); test and val decoded once by the same backend."""
    # shapes, dtypes, sizes and label ranges are checked on every load (pipelines); checksums on request
    meta = check_dataset(cfg.data, full=True) if cfg.verify else read_meta(cfg.data)
    all_train_labels, all_test_labels = read_labels(cfg.data, "train"), read_labels(cfg.data, "test")
    train_idx = stratified_subset(all_train_labels, cfg.train_subset or len(all_train_labels), cfg.seed)
    test_idx = stratified_subset(all_test_labels, cfg.test_subset or len(all_test_labels), cfg.seed)
    train_idx, val_idx = carve_val(all_train_labels, train_idx, cfg.val_split, cfg.seed)
    shard = rt.dist.pipeline_args(cfg.pipeline, cfg.batch_size)  # global batches (tensor) or shards
    train_idx = rt.dist.trim(train_idx)
    crops = PIPELINES[cfg.pipeline].crops  # the decode crops and flips (stream); evaluation streams too
    pipeline = make_pipeline(cfg.pipeline, cfg.data, "train", device=rt.device, seed=cfg.seed, indices=train_idx,
                             **shard, **({"flip": cfg.flip} if crops else {}))
    # a streamed split is evaluated at val_res, else at the last training resolution
    res = cfg.val_res or ((cfg.max_res or cfg.min_res) if crops else None)
    split = partial(eval_split, cfg.pipeline, cfg.data, device=rt.device, res=res, batch_size=cfg.batch_size)
    test = split("test", indices=test_idx, share=rt.dist.eval_slice(len(test_idx)))
    val = split("train", indices=val_idx, share=rt.dist.eval_slice(len(val_idx))) if len(val_idx) else None
    scale, bias = norm_constants(meta["mean"], meta["std"], rt.device)
    return RunData(meta, pipeline, len(train_idx), test, val, train_idx, scale, bias, crops, len(test_idx),
                   len(val_idx))


def build_model(cfg: RunConfig, data: RunData, rt: Runtime, out_dir: Path) -> tuple[nn.Module, nn.Module]:
    """(model, forward): the zoo model on the device, and what runs the batches: the same parameters
    under DDP and/or torch.compile. Checks the disk has room for its checkpoints before any training."""
    check_model_fits(cfg.model, data.num_classes, cfg.model_kwargs, rt.device)
    model = create_model(cfg.model, data.num_classes, **cfg.model_kwargs).to(rt.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data"):  # e.g. airbench's patch-whitening layer, from training images
        sample, _ = load_split_tensors(cfg.pipeline, cfg.data, "train", device=rt.device,
                                       indices=data.train_idx[: min(5000, data.n_train)])  # any pipeline
        model.init_from_data(normalize(sample, data.scale, data.bias, torch.float32))
    # room for checkpoints (model + optimiser state + averages)
    need = rundisk.disk_need(4 * rundisk.checkpoint_bytes(model))
    rt.dist.main_only(rundisk.check_free_space, out_dir, need)
    forward = rt.dist.wrap(model, sync_bn=cfg.sync_bn)  # DDP around the same parameters
    forward = compile_model(forward) if cfg.compile else forward  # static shapes: one graph per batch size
    return model, forward


@dataclass
class Optimisation:
    """How many steps, and the TrainStep that takes them (optimiser, schedule, AMP, EMA, lookahead)."""

    steps_per_epoch: int
    total_steps: int
    n_epochs: int
    train_step: TrainStep
    ema: ModelEma | None
    lookahead: Lookahead | None
    patchup: PatchUp | None

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation and model selection see: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.train_step.task.model


def build_optimisation(cfg: RunConfig, model: nn.Module, forward: nn.Module, data: RunData,
                       rt: Runtime) -> Optimisation:
    """`cfg.epochs` (may be fractional) -> total steps; optimiser and per-batch schedule; lookahead, EMA and
    PatchUp's feature-level mixing around the classification task."""
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(data.pipeline)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    lookahead = Lookahead(model, total_steps) if cfg.lookahead else None
    ema = ModelEma(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema else None
    patchup = build_patchup(cfg, model, data.hw, rt.device)
    task = ClassificationTask(model, forward, label_smoothing=cfg.label_smoothing, patchup=patchup)
    train_step = TrainStep(task, optimizer, cfg, rt.precision, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                      ema=ema, lookahead=lookahead)
    return Optimisation(steps_per_epoch, total_steps, n_epochs, train_step, ema, lookahead, patchup)


def build_sampler(cfg: RunConfig, data: RunData, rt: Runtime) -> AugmentSampler:
    """The fused augmentation's per-batch parameters (seeded; per rank under DDP)."""
    return AugmentSampler(augment_config(cfg, decode_crops=data.crops), seed=rt.dist.sampler_seed(cfg.seed + 1),
                          device=rt.device)


def build_photo(cfg: RunConfig, data: RunData, rt: Runtime) -> PhotoAugment | None:
    """The photo augmentations (None when all are off), keyed by sample index where the pipeline gives one on
    the host, else by (batch, position): per rank when ranks draw their own batches. Erased pixels take the
    dataset's mean colour, i.e. 0 after normalisation, as torchvision's RandomErasing after Normalize."""
    pcfg = PhotoConfig(auto_augment=cfg.auto_augment, num_ops=cfg.randaugment_ops,
                       magnitude=cfg.randaugment_magnitude, color_jitter=tuple(cfg.color_jitter),
                       random_erasing=cfg.random_erasing)
    if not pcfg.active:
        return None
    from .augment.photo import PhotoAugment  # torchvision's imports: only for runs that use them

    mean = tuple(min(255, max(0, round(255 * m))) for m in data.meta["mean"])
    return PhotoAugment(pcfg, seed=cfg.seed + 3, batch_seed=rt.dist.sampler_seed(cfg.seed + 3), fill=mean)


@dataclass
class Records:
    """What the run keeps besides the weights: model selection, the run log and the checkpointed state."""

    monitor: Monitor
    selection: ModelSelection
    runlog: RunLog | distributed.Discard
    state: ckpt_io.TrainState


def build_records(cfg: RunConfig, model: nn.Module, optim: Optimisation, data: RunData, rt: Runtime,
                  out_dir: Path, clock: RunClock, sampler: AugmentSampler, loggers: list | tuple = ()) -> Records:
    monitor = Monitor(cfg.monitor, cfg.early_stop, cfg.min_delta)
    eval_model = optim.eval_model

    def save_best(epoch: int) -> None:  # best.pt: what `fasttrain eval/predict` need
        ckpt_io.save(out_dir / "best.pt", ckpt_io.weights_payload(
            eval_model.state_dict(), cfg.to_dict(), data.meta, epoch=epoch, monitor=monitor.state(),
            image_size=list(data.hw)))

    selection = ModelSelection(monitor, eval_model, rt.dist.main_only_fn(save_best))  # only rank 0 writes
    runlog = (RunLog(out_dir, tensorboard=cfg.tensorboard, loggers=open_loggers(cfg, out_dir, loggers))
              if rt.dist.is_main else distributed.Discard())
    ema = optim.ema
    # everything a restart needs (these names are the checkpoint's keys)
    state = ckpt_io.TrainState(
        out_dir, modules={"model": model, "model_ema": ema.module if ema is not None else None},
        objects={"optimizer": optim.train_step.optimizer, "scaler": optim.train_step.scaler, "lookahead": optim.lookahead,
                 "monitor": monitor, "ema": ckpt_io.Attrs(ema, "updates") if ema is not None else None,
                 "patchup": optim.patchup, "lr_log": ckpt_io.Attrs(runlog, "lrs") if rt.dist.is_main else None,
                 "run_clock": clock},
        sampler=sampler, dist=rt.dist, config=cfg.to_dict(), meta=data.meta, info={"image_size": list(data.hw)})
    rt.dist.seed_process_streams(cfg.seed)  # no-op in one process; a resume restores the streams next
    return Records(monitor, selection, runlog, state)


def warm_up_compile(cfg: RunConfig, model: nn.Module, forward: nn.Module, data: RunData, optim: Optimisation,
                    rt: Runtime, *, first_epoch: int, schedule: ResolutionSchedule | None = None) -> float:
    """Compiles before the clock starts (the seconds are reported as compile_s, not training): every batch
    size the loop will see (a short last batch recompiles) at every resolution of the progressive-resizing
    schedule from `first_epoch` on and, for models whose trainable set changes with the epoch (airbench
    freezes its whitening bias), the first and last epoch's variant."""
    if not cfg.compile:
        return 0.0
    sides = [(r, r) for r in schedule.resolutions(first_epoch, optim.n_epochs)] if schedule else [data.hw]
    last = data.n_train % cfg.batch_size if not getattr(data.pipeline, "drop_last", False) else 0
    # the full batch first: compiled second, dynamo would mark the batch dimension dynamic
    sizes = sorted({len(range(b)[rt.dist.batch_slice(b)]) for b in {cfg.batch_size, last} if b}, reverse=True)
    epochs = sorted({first_epoch, optim.n_epochs - 1}) if hasattr(model, "set_epoch") else [None]
    seconds = compile_warmup(forward, model, [(n, 3, h, w) for h, w in sides for n in sizes], epochs,
                             rt.precision.input_dtype, rt.precision.autocast, data.num_classes, rt.device)
    optimizer = optim.train_step.optimizer
    if hasattr(optimizer, "compile_newton_schulz"):  # Muon: its batched orthogonalisation, also compiled
        seconds += optimizer.compile_newton_schulz()
    return seconds


def run_header(cfg: RunConfig, data: RunData, rt: Runtime, model: nn.Module) -> str:
    h, w = data.hw
    return (f"{cfg.model} on {data.meta['name']} ({data.n_train} train / {data.n_test} test, {h}x{w}) | "
            f"device {device_name(rt.device, rt.dist.world_size)} | amp {rt.precision.name} | compile {cfg.compile} | "
            f"augment {backend_for(rt.device)} | {sum(p.numel() for p in model.parameters()):,} params | "
            f"recipe {cfg.recipe or 'none (RunConfig defaults)'}")


# ============================================================================ per epoch
def start_at(pipeline, skip: int) -> int:
    """The number of this epoch's first batch: a pipeline that can resume mid-epoch without decoding the
    batches already trained on (start_at) starts at `skip`; the others start at 0 and the loop skips."""
    if skip and hasattr(pipeline, "start_at"):
        pipeline.start_at(skip)
        return skip
    return 0


def set_epoch(model: nn.Module, pipeline, epoch: int, schedule: ResolutionSchedule | None = None) -> None:
    model.train()
    if hasattr(model, "set_epoch"):  # e.g. airbench's whitening bias trains only in the first epochs
        model.set_epoch(epoch)
    pipeline.set_epoch(epoch)
    if schedule is not None:  # progressive resizing: this epoch's batches at its resolution
        pipeline.set_resolution(schedule.at(epoch))


def augment(xb: torch.Tensor, yb: torch.Tensor, sampler: AugmentSampler, data: RunData, rt: Runtime, *,
            mix: bool, epoch: int, photo: PhotoAugment | None = None, batch: int = 0
            ) -> tuple[torch.Tensor, object, bool]:
    """(inputs, targets, whether mixup/cutmix mixed the batch): this rank's slice of the augmented global
    batch. The pipeline's batch_indices (tensor pipeline) key the alternating flip. The photo augmentations
    (uint8 in, uint8 out) come first, on the whole batch the pipeline gave."""
    if photo is not None:
        xb = photo(xb, ids=getattr(data.pipeline, "batch_indices", None), epoch=epoch, batch=batch)
    params = sampler.sample(len(xb), *xb.shape[1:3], mix=mix, epoch=epoch,
                            keys=getattr(data.pipeline, "batch_indices", None))
    inputs, targets = rt.dist.augment(augment_batch, xb, yb, params, data.scale, data.bias, rt.precision.input_dtype)
    return inputs, targets, params.has_mix


def run_evaluate(model: nn.Module, data: RunData, split: tuple[torch.Tensor, torch.Tensor] | object, rt: Runtime,
                 **kw) -> dict:
    """`evaluate` on a split held on the device (under DDP each rank takes a slice; sums are all-reduced),
    or on a streamed split batch by batch (each rank its own share)."""
    if not isinstance(split, tuple):
        return evaluate_batches(model, split, data.scale, data.bias, amp_dtype=rt.precision.dtype,
                                num_classes=data.num_classes, dist=rt.dist, device=rt.device, **kw)
    images, labels = split
    return evaluate(model, images, labels, data.scale, data.bias, amp_dtype=rt.precision.dtype,
                    num_classes=data.num_classes, dist=rt.dist, **kw)


def epoch_row(cfg: RunConfig, epoch: int, tally: EpochTally, epoch_s: float, optim: Optimisation, records: Records,
              data: RunData, rt: Runtime, *, last: bool) -> dict:
    """The epoch's metrics.jsonl row: training sums over all ranks and, at eval epochs, val (or, without a
    val split, test) metrics; a new best on val is kept and written as best.pt."""
    loss_sum, correct, seen = rt.dist.all_reduce_sum(tally.loss_sum, tally.correct, tally.seen)
    row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
           "train_acc": correct.item() / max(seen, 1), "test_loss": None, "test_acc": None,
           "lr": optim.train_step.optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_s, 4),
           "imgs_per_s": round(seen / epoch_s, 1)}
    if getattr(data.pipeline, "res", None) is not None:  # the epoch's training resolution (progressive resizing)
        row["res"] = data.pipeline.res
    if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
        # with a val split only val is evaluated per epoch; test waits for the final eval
        split, images = ("val", data.val) if data.val is not None else ("test", data.test)
        row.update(prefixed(split, run_evaluate(optim.eval_model, data, images, rt, tta="none")))
        records.selection.observe(row)
    return row


# ============================================================================ the end of the run
def build_summary(cfg: RunConfig, data: RunData, rt: Runtime, model: nn.Module, final: dict, plain: dict, *,
                  steps: int, history: list[dict], train_s: float, eval_s: float, compile_s: float,
                  recompiles: int, wall_s: float, warmup_epochs: list[int]) -> dict:
    """summary.json's numbers (report.finish_run adds the final test metrics and the selection)."""
    return {
        "model": cfg.model, "dataset": data.meta["name"], "recipe": cfg.recipe, "epochs": cfg.epochs,
        "steps": steps, "test_acc": final["acc"], "test_loss": final["loss"], "test_acc_no_tta": plain["acc"],
        "tta": cfg.tta, "train_s": round(train_s, 3), "eval_s": round(eval_s, 3), "wall_s": round(wall_s, 3),
        **throughput(history, warmup_epochs),  # train_imgs_per_s without the warm-up epochs, and theirs apart
        "device": device_name(rt.device, rt.dist.world_size), "amp": rt.precision.name, "compile": cfg.compile,
        "compile_s": round(compile_s, 3), "recompiles": recompiles, "params": sum(p.numel() for p in model.parameters()),
        "train_samples": data.n_train, "test_samples": data.n_test, "batch_size": cfg.batch_size,
        "augment_backend": backend_for(rt.device), "torch": torch.__version__, "world_size": rt.dist.world_size,
    }


def write_outputs(summary: dict, cfg: RunConfig, data: RunData, final: dict, records: Records, history: list[dict],
                  out_dir: Path) -> None:
    """Rank 0: metrics in the summary, confusion.{json,png}, lr.png, closed logs, summary.json, curves.png."""
    from .plots import plot_curves  # matplotlib: loaded only when a run finishes

    finish_run(summary, out_dir, cfg, data.meta, final, records.monitor, records.runlog,
               val_samples=data.n_val)
    write_json(out_dir / "summary.json", summary)
    plot_curves(history, out_dir / "curves.png", title=f"{cfg.model} on {data.meta['name']}")
