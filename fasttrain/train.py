"""train(cfg) -> summary: one flat loop you can read top to bottom.

Sections: setup (device, data, model, optimiser, schedule) -> epochs (augment on the device, AMP step,
per-batch LR) -> eval outside the timed region -> run directory (config, metrics, checkpoint, plots).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .augment import AugmentConfig, AugmentSampler, augment_batch, backend_for, norm_constants
from .config import RunConfig
from .data.formats import read_labels
from .data.splits import carve_val, stratified_subset
from .data.tensor_format import read_meta
from .evaluate import evaluate, prefixed  # metrics, val split
from .models import create_model
from .optim import Lookahead, TrainStep, build_optimizer, lr_multiplier, set_lr
from .pipelines import load_split_tensors, make_pipeline
from .progress import EpochProgress
from . import checkpoint as ckpt_io, distributed, resilience  # resume, DDP, failure handling
from .losses import mixed_cross_entropy
from .runio import write_json
from .runtime import amp_name, compile_warmup, device_name, resolve_amp, resolve_device, sync
from . import rundir  # run folder: lock, refusals, failed-start cleanup, resolved config.json
from .init_weights import load_init_weights
from .runclock import RunClock, throughput


# ============================================================================ small helpers
# ============================================================================ the run
@rundir.releases_run_folder  # the folder claimed below is released at exit; a failed start leaves nothing
def train(cfg: RunConfig, *, quiet: bool = False, resume: bool = False) -> dict:
    """Trains per `cfg`; with resume=True continues the run in cfg.out from its checkpoint."""
    cfg.validate()
    clock = RunClock()  # wall time across resumed segments; warm-up epochs
    log = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    device = resolve_device(cfg.device)
    dist = distributed.setup(device)  # torchrun/DDP (cuda:LOCAL_RANK per process), else single
    device, quiet = dist.device, quiet or not dist.is_main
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    amp_dtype = resolve_amp(cfg.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt_io.set_deterministic(cfg.deterministic, device)

    out_dir = Path(cfg.out) if cfg.out else rundir.new_run_path(cfg.model)
    out_dir = Path(dist.gather_object(str(out_dir))[0])  # rank 0 names the run
    # --- run folder: writable, locked, not someone else's or a finished run (fasttrain.rundir)
    run_folder = dist.main_only(rundir.claim, out_dir, resume=resume, force=cfg.force, epochs=cfg.epochs,
                                init_from=cfg.init_from, log=log)
    if resume:
        dist.main_only(ckpt_io.check_resumable, out_dir)
    cfg.out = str(out_dir)

    # --- data: pipeline `cfg.pipeline` yields uint8 NHWC batches on the device; the test split
    # is decoded once by the same backend and kept on the device
    meta = read_meta(cfg.data)
    if resume:
        rundir.check_same_dataset(cfg, meta)
    else:  # config.json says what runs: amp, threads, monitor, absolute paths, the dataset's identity
        rundir.resolve_config(cfg, meta, device, amp_dtype)
        if dist.is_main:
            rundir.save_config(run_folder, cfg)
    all_train_labels, all_test_labels = read_labels(cfg.data, "train"), read_labels(cfg.data, "test")
    train_idx = stratified_subset(all_train_labels, cfg.train_subset or len(all_train_labels), cfg.seed)
    test_idx = stratified_subset(all_test_labels, cfg.test_subset or len(all_test_labels), cfg.seed)
    train_idx, val_idx = carve_val(all_train_labels, train_idx, cfg.val_split, cfg.seed)
    shard = dist.pipeline_args(cfg.pipeline, cfg.batch_size)  # global batches (tensor) or shards
    train_idx = dist.trim(train_idx)
    pipeline = make_pipeline(cfg.pipeline, cfg.data, "train", device=device, seed=cfg.seed, indices=train_idx,
                             **shard)
    test_images, test_labels = load_split_tensors(cfg.pipeline, cfg.data, "test", device=device, indices=test_idx)
    val_images, val_labels = (load_split_tensors(cfg.pipeline, cfg.data, "train", device=device, indices=val_idx)
                              if len(val_idx) else (None, None))  # selection never sees test
    scale, bias = norm_constants(meta["mean"], meta["std"], device)
    n_train, (h, w) = len(train_idx), meta["shape"][:2]

    # --- model
    model = create_model(cfg.model, meta["num_classes"], **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data"):
        from .augment import normalize

        sample, _ = load_split_tensors(cfg.pipeline, cfg.data, "train", device=device,
                                       indices=train_idx[: min(5000, n_train)])  # any pipeline
        model.init_from_data(normalize(sample, scale, bias, torch.float32))
    if cfg.init_from and not resume:  # weights only; a resume restores its own below
        load_init_weights(model, cfg.init_from, meta["num_classes"], log)
    n_params = sum(p.numel() for p in model.parameters())
    # room for checkpoints (model + optimiser state + averages) before any training
    need = resilience.disk_need(4 * resilience.checkpoint_bytes(model))
    dist.main_only(resilience.check_free_space, out_dir, need)
    step_model = dist.wrap(model, sync_bn=cfg.sync_bn)  # DDP around the same parameters
    step_model = torch.compile(step_model) if cfg.compile else step_model
    run_evaluate = dist.wrap_evaluate(evaluate)  # each rank evaluates a slice; sums all-reduced

    # --- optimiser and schedule
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(pipeline)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp_dtype == torch.float16 and device.type == "cuda"))
    lookahead = Lookahead(model, total_steps) if cfg.lookahead else None
    aug_cfg = AugmentConfig(crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode, flip=cfg.flip,
                            alternating_flip=cfg.alternating_flip, cutout=cfg.cutout, mixup_alpha=cfg.mixup,
                            cutmix_alpha=cfg.cutmix, mix_prob=cfg.mix_prob, switch_prob=cfg.switch_prob)
    sampler = AugmentSampler(aug_cfg, seed=dist.sampler_seed(cfg.seed + 1), device=device)
    in_dtype = amp_dtype or torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    # --- accumulation + clipping (TrainStep), EMA, PatchUp, model selection, logs
    from .ema import ModelEma
    from .monitor import Monitor, save_best
    from .regularizers import PatchUp
    from .runlog import RunLog

    stepper = TrainStep(optimizer, scaler, cfg)
    ema = ModelEma(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema else None
    eval_model = ema.module if ema is not None else model  # evaluation uses the EMA when it is on
    patchup = (PatchUp(model, torch.zeros(2, 3, h, w, device=device).to(memory_format=torch.channels_last),
                       mode=cfg.patchup, prob=cfg.patchup_prob, alpha=cfg.patchup_alpha, block=cfg.patchup_block,
                       gamma=cfg.patchup_gamma, seed=cfg.seed + 2) if cfg.patchup != "none" else None)
    monitor = Monitor(cfg.monitor, cfg.early_stop, cfg.min_delta)
    best_state = None
    runlog = RunLog(out_dir, tensorboard=cfg.tensorboard) if dist.is_main else distributed.Discard()
    save_best = dist.main_only_fn(save_best)  # only rank 0 writes
    # --- everything a restart needs; stop signals and the NaN guard
    state = ckpt_io.TrainState(
        out_dir, modules={"model": model, "model_ema": ema.module if ema is not None else None},
        objects={"optimizer": optimizer, "scaler": scaler, "lookahead": lookahead, "monitor": monitor,
                 "ema": ckpt_io.Attrs(ema, "updates") if ema is not None else None, "patchup": patchup,
                 "lr_log": ckpt_io.Attrs(runlog, "lrs") if dist.is_main else None, "run_clock": clock},
        sampler=sampler, dist=dist, config=cfg.to_dict(), meta=meta, info={"image_size": [h, w]})
    dist.seed_process_streams(cfg.seed)  # no-op in one process; a resume restores the streams next
    pos = state.restore() if resume else ckpt_io.Position()
    clock.start_segment(pos.epoch + 1)  # this segment's first epoch carries its warm-up
    if resume and not quiet:
        print(f"resuming {out_dir} at step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch})", flush=True)
    for row in pos.history:
        runlog.log(row)
    sentinel = resilience.Sentinel(dist, device)

    # compile before the clock starts: the first compiled step is reported as compile_s, not training
    compile_s = 0.0
    if cfg.compile:
        # every batch size the loop will see (a short last batch recompiles) and, for models whose
        # trainable set changes with the epoch (airbench freezes its whitening bias), the first and last
        # epoch's variant: each would otherwise trigger a recompile inside a timed epoch
        last = n_train % cfg.batch_size if not getattr(pipeline, "drop_last", False) else 0
        sizes = sorted({len(range(b)[dist.batch_slice(b)]) for b in {cfg.batch_size, last} if b})
        epochs = sorted({pos.epoch, n_epochs - 1}) if hasattr(model, "set_epoch") else [None]
        compile_s = compile_warmup(step_model, model, [(n, 3, h, w) for n in sizes], epochs, in_dtype, autocast,
                                   meta["num_classes"], device)
    progress = EpochProgress(n_epochs, steps_per_epoch, quiet=quiet)
    progress.header(
        f"{cfg.model} on {meta['name']} ({n_train} train / {len(test_labels)} test, {h}x{w}) | device {device} | "
        f"amp {amp_name(amp_dtype)} | compile {cfg.compile} | augment {backend_for(device)} | {n_params:,} params | "
        f"recipe {cfg.recipe}"
    )
    history: list[dict] = pos.history  # a resumed run continues its history, step count and clock
    step = pos.step
    train_s = pos.train_s
    best_state = pos.extra.get("best_state", best_state)
    for epoch in range(pos.epoch, n_epochs):
        # ----------------------------------------------------------------- one epoch (timed)
        model.train()
        if hasattr(model, "set_epoch"):
            model.set_epoch(epoch)
        pipeline.set_epoch(epoch)
        mix = cfg.mix_off_epoch is None or epoch < cfg.mix_off_epoch  # mixing off after epoch N
        # zeros, unless resuming in the middle of this epoch
        loss_sum, correct, seen, skip, done_s = pos.epoch_start(epoch, device)
        sync(device)
        t0 = time.perf_counter()
        progress.start_epoch(epoch)
        for batch_i, (x, y) in enumerate(pipeline):
            if step >= total_steps:
                break
            if batch_i < skip:  # batches done before a mid-epoch checkpoint
                continue
            # keys: the batch's dataset indices (tensor pipeline), for the alternating flip
            params = sampler.sample(len(x), h, w, mix=mix, keys=getattr(pipeline, "batch_indices", None),
                                    epoch=epoch)
            # under DDP, this rank's slice of the global batch
            inputs, targets = dist.augment(augment_batch, x, y, params, scale, bias, in_dtype)
            runlog.log_lr(step, set_lr(optimizer, lr_multiplier(step, total_steps, cfg, steps_per_epoch)))
            if patchup is not None and mix and not params.has_mix:
                patchup.arm(len(inputs))  # feature-level mixing on batches not mixed at the input
            with autocast():
                logits = step_model(inputs)
                if patchup is not None:
                    targets = patchup.targets(targets)
                loss = mixed_cross_entropy(logits, targets, cfg.label_smoothing)
            # backward; every accum_steps batches: unscale, clip, step, zero grads
            stepped = stepper.backward(loss, flush=batch_i + 1 == steps_per_epoch or step + 1 == total_steps)
            step += 1
            if stepped and ema is not None:
                ema.update(model)
            if lookahead is not None:
                lookahead.step(model, step, final=(step == total_steps))
            # accumulate on the device; the host reads them only at log points
            loss_sum += loss.detach() * len(inputs)
            correct += (logits.detach().argmax(1) == targets.y_a).sum()
            seen += len(inputs)
            if progress.should_log(batch_i):
                progress.update(batch_i + 1, loss_sum.item() / seen, correct.item() / seen,
                                seen / (time.perf_counter() - t0))
            sentinel.observe(loss, step)  # NaN/inf noted on the device; stop signals polled
            if sentinel.should_stop(step, at_boundary=stepped, checkpoint=state.path,
                                    steps_per_epoch=steps_per_epoch):  # a signal: save mid-epoch, exit
                sentinel.check(checkpoint=state.path, steps_per_epoch=steps_per_epoch)
                acc = dict(loss_sum=loss_sum, correct=correct, seen=seen,
                           elapsed_s=time.perf_counter() - t0 + done_s)
                state.save(epoch=epoch, batch=batch_i + 1, step=step, history=history, train_s=train_s,
                           epoch_acc=acc, extra={"best_state": best_state})
                raise sentinel.interrupt(out_dir, epoch, step)
        sync(device)
        sentinel.check(checkpoint=state.path, steps_per_epoch=steps_per_epoch)  # before eval/saving
        loss_sum, correct, seen = dist.all_reduce_sum(loss_sum, correct, seen)  # all ranks' sums
        epoch_s = time.perf_counter() - t0 + done_s
        train_s += epoch_s
        imgs_per_s = seen / epoch_s
        # ----------------------------------------------------------------- eval (not timed)
        last = epoch == n_epochs - 1
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
               "train_acc": correct.item() / max(seen, 1), "test_loss": None, "test_acc": None,
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_s, 4),
               "imgs_per_s": round(imgs_per_s, 1)}
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            # with a val split only val is evaluated per epoch; test waits for the final eval
            split, ev_x, ev_y = ("val", val_images, val_labels) if val_images is not None else \
                ("test", test_images, test_labels)
            row.update(prefixed(split, run_evaluate(eval_model, ev_x, ev_y, scale, bias, amp_dtype=amp_dtype,
                                                tta="none", num_classes=meta["num_classes"])))
            if val_images is not None and monitor.update(row):
                best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
                save_best(out_dir / "best.pt", eval_model, cfg, meta, epoch=epoch + 1, monitor=monitor,
                          image_size=(h, w))
        history.append(row)
        runlog.log(row)
        progress.end_epoch(row)
        if monitor.should_stop:  # early stopping on the val metric
            monitor.stopped_epoch = epoch + 1
            break
        # the epoch's checkpoint (atomic); then a pending stop signal ends the run
        state.save(epoch=epoch + 1, batch=0, step=step, history=history, train_s=train_s,
                   extra={"best_state": best_state})
        if sentinel.requested_anywhere():
            raise sentinel.interrupt(out_dir, epoch, step)
    sentinel.close()

    # --- final evaluation with TTA (not timed), checkpoint, summary, plots
    t_eval = time.perf_counter()
    last_state = None
    if best_state is not None:  # the test set sees the model selected on val (best.pt)
        last_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
        eval_model.load_state_dict(best_state)
    final = run_evaluate(eval_model, test_images, test_labels, scale, bias, amp_dtype=amp_dtype, tta=cfg.tta,
                     num_classes=meta["num_classes"], confusion=True)
    plain = final if cfg.tta == "none" else run_evaluate(eval_model, test_images, test_labels, scale, bias,
                                                     amp_dtype=amp_dtype, num_classes=meta["num_classes"])
    if last_state is not None:
        eval_model.load_state_dict(last_state)  # checkpoint.pt keeps the last weights
    eval_s = time.perf_counter() - t_eval
    # the full training state (model, model_ema, classes, mean, std, image_size for readers)
    state.save(epoch=n_epochs, batch=0, step=step, history=history, train_s=train_s,
               extra={"best_state": best_state})
    summary = {
        "model": cfg.model, "dataset": meta["name"], "recipe": cfg.recipe, "epochs": cfg.epochs, "steps": step,
        "test_acc": final["acc"], "test_loss": final["loss"], "test_acc_no_tta": plain["acc"],
        "tta": cfg.tta, "train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
        "wall_s": round(clock.elapsed(), 3), **throughput(history, clock.warmup_epochs),
        "device": device_name(device), "amp": amp_name(amp_dtype), "run_dir": str(out_dir),
        "compile": cfg.compile, "compile_s": round(compile_s, 3), "params": n_params, "train_samples": n_train, "test_samples": len(test_labels),
        "batch_size": cfg.batch_size, "augment_backend": backend_for(device), "torch": torch.__version__,
    }
    summary["world_size"] = dist.world_size
    if not dist.is_main:  # only rank 0 writes the summary, report and plots
        return summary
    from .report import finish_run  # metrics in the summary, confusion.{json,png}, lr.png, logs

    finish_run(summary, out_dir, cfg, meta, final, monitor, runlog, val_samples=len(val_idx))
    write_json(out_dir / "summary.json", summary)
    from .plots import plot_curves

    plot_curves(history, out_dir / "curves.png", title=f"{cfg.model} on {meta['name']}")
    progress.footer(summary)
    return summary
