"""train(cfg) -> summary: one flat loop you can read top to bottom.

Sections: setup (device, data, model, optimiser, schedule) -> epochs (augment on the device, AMP step,
per-batch LR) -> eval outside the timed region -> run directory (config, metrics, checkpoint, plots).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, AugmentSampler, augment_batch, backend_for, norm_constants
from .config import ConfigError, RunConfig
from .data.formats import read_labels  # issue 5
from .data.tensor_format import read_meta
from .evaluate import evaluate
from .models import create_model
from .optim import Lookahead, build_optimizer, lr_multiplier
from .pipelines import load_split_tensors, make_pipeline  # issue 5
from .progress import EpochProgress
from .runio import atomic_torch_save, write_json


# ============================================================================ small helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return dev


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. 'auto': bf16 on CUDA (fp16 on GPUs without bf16); on a CPU bf16
    only with AMX tiles, because without them oneDNN's bf16 convolutions are slower than fp32 (measured here)."""
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx else None


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` indices with class proportions kept (round-robin over shuffled per-class lists), sorted."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    # interleave: k-th element of every class, then (k+1)-th, ... so any prefix is balanced
    depth = max(len(p) for p in per_class)
    inter = [p[k] for k in range(depth) for p in per_class if k < len(p)]
    return np.sort(np.asarray(inter[:n]))


def mixed_cross_entropy(logits: torch.Tensor, targets, label_smoothing: float) -> torch.Tensor:
    """lam * CE(y_a) + (1 - lam) * CE(y_b), averaged over the batch."""
    logits = logits.float()
    loss_a = F.cross_entropy(logits, targets.y_a, reduction="none", label_smoothing=label_smoothing)
    if targets.y_b is targets.y_a:
        return loss_a.mean()
    loss_b = F.cross_entropy(logits, targets.y_b, reduction="none", label_smoothing=label_smoothing)
    return (targets.lam * loss_a + (1 - targets.lam) * loss_b).mean()


# ============================================================================ the run
def train(cfg: RunConfig, *, quiet: bool = False) -> dict:
    cfg.validate()
    t_run = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    amp_dtype = resolve_amp(cfg.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    out_dir = Path(cfg.out or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise RuntimeError(f"--out {out_dir}: run directory is not writable")
    cfg.out = str(out_dir)
    cfg.save(out_dir / "config.json")

    # --- data (issue 5): pipeline `cfg.pipeline` yields uint8 NHWC batches on the device; the test split
    # is decoded once by the same backend and kept on the device
    meta = read_meta(cfg.data)
    all_train_labels, all_test_labels = read_labels(cfg.data, "train"), read_labels(cfg.data, "test")
    train_idx = stratified_subset(all_train_labels, cfg.train_subset or len(all_train_labels), cfg.seed)
    test_idx = stratified_subset(all_test_labels, cfg.test_subset or len(all_test_labels), cfg.seed)
    pipeline = make_pipeline(cfg.pipeline, cfg.data, "train", cfg.batch_size, device=device, seed=cfg.seed,
                             indices=train_idx)
    test_images, test_labels = load_split_tensors(cfg.pipeline, cfg.data, "test", device=device, indices=test_idx)
    scale, bias = norm_constants(meta["mean"], meta["std"], device)
    n_train, (h, w) = len(train_idx), meta["shape"][:2]

    # --- model
    model = create_model(cfg.model, meta["num_classes"], **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data"):
        from .augment import normalize

        sample, _ = load_split_tensors(cfg.pipeline, cfg.data, "train", device=device,
                                       indices=train_idx[: min(5000, n_train)])  # issue 5: any pipeline
        model.init_from_data(normalize(sample, scale, bias, torch.float32))
    n_params = sum(p.numel() for p in model.parameters())
    step_model = torch.compile(model) if cfg.compile else model

    # --- optimiser and schedule
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(pipeline)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp_dtype == torch.float16 and device.type == "cuda"))
    lookahead = Lookahead(model, total_steps) if cfg.lookahead else None
    aug_cfg = AugmentConfig(crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode, flip=cfg.flip, cutout=cfg.cutout,
                            mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, mix_prob=cfg.mix_prob)
    sampler = AugmentSampler(aug_cfg, seed=cfg.seed + 1, device=device)
    in_dtype = amp_dtype or torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    progress = EpochProgress(n_epochs, steps_per_epoch, quiet=quiet)
    progress.header(
        f"{cfg.model} on {meta['name']} ({n_train} train / {len(test_labels)} test, {h}x{w}) | device {device} | "
        f"amp {amp_dtype} | compile {cfg.compile} | augment {backend_for(device)} | {n_params:,} params | "
        f"recipe {cfg.recipe}"
    )
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.write_text("")
    history: list[dict] = []
    step = 0
    train_s = 0.0
    for epoch in range(n_epochs):
        # ----------------------------------------------------------------- one epoch (timed)
        model.train()
        if hasattr(model, "set_epoch"):
            model.set_epoch(epoch)
        pipeline.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        _sync(device)
        t0 = time.perf_counter()
        progress.start_epoch(epoch)
        for batch_i, (x, y) in enumerate(pipeline):
            if step >= total_steps:
                break
            params = sampler.sample(len(x), h, w)
            inputs, targets = augment_batch(x, y, params, scale, bias, in_dtype)
            lr_mult = lr_multiplier(step, total_steps, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_mult
            with autocast():
                logits = step_model(inputs)
                loss = mixed_cross_entropy(logits, targets, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if lookahead is not None:
                lookahead.step(model, step, final=(step == total_steps))
            # accumulate on the device; the host reads them only at log points
            loss_sum += loss.detach() * len(x)
            correct += (logits.detach().argmax(1) == targets.y_a).sum()
            seen += len(x)
            if progress.should_log(batch_i):
                progress.update(batch_i + 1, loss_sum.item() / seen, correct.item() / seen,
                                seen / (time.perf_counter() - t0))
        _sync(device)
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        imgs_per_s = seen / epoch_s
        # ----------------------------------------------------------------- eval (not timed)
        last = epoch == n_epochs - 1
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
               "train_acc": correct.item() / max(seen, 1), "test_loss": None, "test_acc": None,
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_s, 4),
               "imgs_per_s": round(imgs_per_s, 1)}
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            ev = evaluate(model, test_images, test_labels, scale, bias, amp_dtype=amp_dtype, tta="none")
            row["test_loss"], row["test_acc"] = ev["loss"], ev["acc"]
        history.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        progress.end_epoch(row)

    # --- final evaluation with TTA (not timed), checkpoint, summary, plots
    t_eval = time.perf_counter()
    final = evaluate(model, test_images, test_labels, scale, bias, amp_dtype=amp_dtype, tta=cfg.tta)
    eval_s = time.perf_counter() - t_eval
    atomic_torch_save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": n_epochs, "step": step,
                       "classes": meta["classes"], "mean": meta["mean"], "std": meta["std"]},
                      out_dir / "checkpoint.pt")
    summary = {
        "model": cfg.model, "dataset": meta["name"], "recipe": cfg.recipe, "epochs": cfg.epochs, "steps": step,
        "test_acc": final["acc"], "test_loss": final["loss"], "test_acc_no_tta": history[-1]["test_acc"],
        "tta": cfg.tta, "train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
        "wall_s": round(time.perf_counter() - t_run, 3), "train_imgs_per_s": round(sum(r["imgs_per_s"] * r["epoch_s"] for r in history) / max(train_s, 1e-9), 1),
        "device": _device_name(device), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "compile": cfg.compile, "params": n_params, "train_samples": n_train, "test_samples": len(test_labels),
        "batch_size": cfg.batch_size, "augment_backend": backend_for(device), "torch": torch.__version__,
    }
    write_json(out_dir / "summary.json", summary)
    from .plots import plot_curves

    plot_curves(history, out_dir / "curves.png", title=f"{cfg.model} on {meta['name']}")
    progress.footer(summary)
    return summary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
