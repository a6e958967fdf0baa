"""`fasttrain lr-find MODEL --data DIR`: the learning-rate range test (Smith 2015, "Cyclical Learning Rates";
the fastai / Lightning lr finder). One short run whose lr grows exponentially from `start_lr` to `end_lr`
over `steps` optimiser steps, on the run's own model, optimiser, batch size, precision and loss (its recipe
and options as `fasttrain run` resolves them); the images are normalised but not augmented.

The loss of each step is smoothed by an exponential moving average with bias correction (beta 0.98, as
fastai); the sweep stops early once the smoothed loss exceeds 4x its minimum (or is not finite). Two
suggestions come from the smoothed curve:
  - steepest: the lr where the loss falls fastest (the most negative slope against log lr), searched up to
    the minimum, the usual choice for a one-cycle or warm-up schedule's peak;
  - min/10: a tenth of the lr at the minimum loss, the conservative rule.
The suggested `--lr` is the steepest point, or min/10 when no descent was found before the minimum. Written
to --out: lr_find.png (loss against lr, both suggestions marked) and lr_find.json (every step's lr, loss and
smoothed loss, and the suggestions), under the output rule (fasttrain.outputs). Nothing else is kept: the
weights the sweep trained are thrown away.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .augment import Targets, normalize
from .config import ConfigError, RunConfig
from .outputs import claim_in_folder, signed, write_json
from .plots import plot_lr_range
from .runsetup import build_runtime
from .train import build_data, build_model, build_optimisation

OUTPUTS = ("lr_find.png", "lr_find.json")
BETA = 0.98  # smoothing of the loss (fastai's)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """start_lr * (end_lr / start_lr) ** (i / (steps - 1)): evenly spaced on a log axis."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses: list[float], beta: float = BETA) -> np.ndarray:
    """Bias-corrected exponential moving average: avg_i / (1 - beta^(i+1))."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return np.array(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict:
    """The steepest descent before the minimum, min/10, and which one is suggested (module doc)."""
    best = int(np.argmin(smoothed))
    min_over_10 = float(lrs[best] / 10)
    steepest = None
    if best >= 2:  # a slope needs a few points before the minimum
        slopes = np.gradient(smoothed[:best + 1], np.log(lrs[:best + 1]))
        steepest = float(lrs[int(np.argmin(slopes[:best]))])
    return {"steepest": steepest, "min_over_10": min_over_10, "min_loss_lr": float(lrs[best]),
            "suggested": steepest if steepest is not None else min_over_10}


def lr_find(cfg: RunConfig, *, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100,
            out: str | Path | None = None, force: bool = False, log=print) -> dict:
    """Runs the range test with `cfg`'s model, data and optimiser; returns (and writes to `out`) the curve and
    the suggestions."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr {start_lr:g} / --end-lr {end_lr:g}: need 0 < start-lr < end-lr")
    if steps < 5:
        raise ConfigError(f"--steps: the sweep needs at least 5 steps, got {steps}")
    out = Path(out or f"runs/lr-find-{cfg.model.replace('/', '_').rsplit(':', 1)[-1]}")
    targets = claim_in_folder(out, OUTPUTS, option="--out", force=force)  # before any work
    out.mkdir(parents=True, exist_ok=True)
    # the run's settings, with a flat schedule the sweep drives and nothing that averages or looks ahead
    cfg = dataclasses.replace(cfg, schedule="constant", warmup_frac=0.0, warmup_epochs=None, lookahead=False,
                              ema=False, compile=False, epochs=1e6)
    cfg.validate()
    rt = build_runtime(cfg)
    data = build_data(cfg, rt)
    model, forward = build_model(cfg, data, rt, out)
    optim = build_optimisation(cfg, model, forward, data, rt)
    groups = optim.train_step.optimizer.param_groups
    ratios = [g["base_lr"] / cfg.lr for g in groups]  # per-group multipliers (bias lr scale, ...) kept
    lrs = lr_schedule(start_lr, end_lr, steps)
    losses: list[float] = []
    log(f"lr range test: {cfg.model} on {data.meta['name']}, {steps} steps from {start_lr:g} to {end_lr:g}, "
        f"batch {cfg.batch_size}, {cfg.optimizer}")
    model.train()
    epoch = 0
    while len(losses) < steps:
        data.pipeline.set_epoch(epoch)
        for xb, yb in data.pipeline:
            i = len(losses)
            if i == steps:
                break
            for g, r in zip(groups, ratios):
                g["base_lr"] = r * float(lrs[i])
            inputs = normalize(xb, data.scale, data.bias, rt.precision.input_dtype)
            plain = Targets(yb, yb, torch.ones(len(yb), device=yb.device))  # unmixed: every weight on y_a
            result = optim.train_step(inputs, plain, end_of_epoch=False)
            losses.append(result.loss.item())
            smoothed = smooth(losses)
            if not math.isfinite(losses[-1]) or smoothed[-1] > DIVERGED * smoothed.min():
                break
        else:
            epoch += 1
            continue
        break
    n = len(losses)
    smoothed = smooth(losses)
    finite = np.isfinite(smoothed)
    if finite.sum() < 5:
        raise ConfigError(f"--start-lr {start_lr:g}: the loss diverged within {n} steps; start lower")
    found = suggest(lrs[:n][finite], smoothed[finite])
    result = {"model": cfg.model, "data": cfg.data, "batch_size": cfg.batch_size, "optimizer": cfg.optimizer,
              "start_lr": start_lr, "end_lr": end_lr, "steps": n, "stopped_early": n < steps, **found,
              "lr": lrs[:n].tolist(), "loss": losses, "smoothed": smoothed.tolist()}
    write_json(targets["lr_find.json"], signed(result))
    plot_lr_range(lrs[:n], np.array(losses), smoothed, found, targets["lr_find.png"],
                  title=f"lr range test: {cfg.model} on {data.meta['name']} (batch {cfg.batch_size})")
    result["out"] = str(out)
    return result
