"""`fasttrain run --resume RUN --epochs N`: train a run longer than it was planned, where that is sound.

A resumed run must follow the same learning-rate curve over the steps it already took, or its result is
neither the old run nor a clean new one. So a run is extended only when nothing it did depended on its
planned length:
  - schedule constant, step or multistep: the lr of a step depends on its epoch, not on the run's length
    (onecycle, cosine, linear, piecewise and htd anneal towards the last step: more epochs would bend the
    curve already followed; start a new run from the weights with --init-from instead);
  - a warmup that ends within the epochs already planned: one given in epochs (--warmup-epochs), none, or
    a warmup_frac (a share of the length, 0.2 by default) whose share of the new length still ends by the
    old one, so every step to come is past it exactly as before (up to 5x the length with the default 0.2);
  - no lookahead: its averaging strength grows with step / planned steps.
A finished run is also refused when it stopped early or ended inside an epoch (fasttrain.rundir).
"""

from __future__ import annotations

from .config import ConfigError
from .words import count, number

EXTENSIBLE_SCHEDULES = ("constant", "step", "multistep")


def check_extension(saved: dict, epochs: float) -> None:
    """Raises ConfigError with the reason when the run configured by `saved` (its config.json) cannot be
    extended to `epochs`."""
    old = saved.get("epochs")
    head = f"--epochs {epochs:g}"
    if old is None or epochs <= old:
        raise ConfigError(f"{head}: the run was planned for {count(old, 'epoch')}; --resume --epochs only extends a run, "
                          f"so pass more than {old}")
    schedule = saved.get("schedule")
    if schedule not in EXTENSIBLE_SCHEDULES:
        raise ConfigError(
            f"{head}: the run's {schedule} schedule anneals the learning rate towards its planned last step, so "
            f"more epochs would change the steps it already took; only {', '.join(EXTENSIBLE_SCHEDULES)} "
            f"schedules can be extended. Start a new run from its weights instead: --init-from RUN_DIR")
    frac = saved.get("warmup_frac") or 0
    if saved.get("warmup_epochs") is None and frac * epochs > old:
        # steps: int(ceil(epochs * spe) * frac) <= old * spe whenever frac * epochs <= old (old is whole epochs)
        raise ConfigError(
            f"{head}: the run's warmup is a fraction of its planned length (warmup_frac {frac:g}): over "
            f"{count(epochs, 'epoch')} it would run until epoch {frac * epochs:g}, past the {number(old)} planned before, and "
            f"change the learning rate of the steps to come; extend to at most {count(old / frac, 'epoch')}, or start a "
            f"new run from its weights: --init-from RUN_DIR")
    if saved.get("lookahead"):
        raise ConfigError(
            f"{head}: the run uses lookahead, whose averaging grows with step / planned steps, so more "
            f"epochs would change what it already did. Start a new run instead: --init-from RUN_DIR")
