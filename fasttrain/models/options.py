"""Model options given on the command line (--width, --activation, --drop-path, --image-size) merged into
a RunConfig's model_kwargs, checked against what the chosen model takes before any training starts."""

from __future__ import annotations

from typing import Any

from .layers import ACTIVATIONS
from .registry import model_options


def merge_model_options(cfg: Any, **options: Any) -> None:
    """Put the options that were given (not None) into cfg.model_kwargs, then check every model kwarg
    (recipe ones too) against the model's signature. Raises config.ConfigError naming the option."""
    from ..config import ConfigError

    given = {k: v for k, v in options.items() if v is not None}
    if "activation" in given and given["activation"] not in ACTIVATIONS:
        raise ConfigError(f"--activation: must be one of {ACTIVATIONS}, got {given['activation']!r}")
    if "drop_path" in given and not 0 <= given["drop_path"] < 1:
        raise ConfigError(f"--drop-path: must lie in [0, 1), got {given['drop_path']}")
    if "image_size" in given and given["image_size"] < 8:
        raise ConfigError(f"--image-size: must be >= 8 pixels, got {given['image_size']}")
    if "width" in given and given["width"] <= 0:
        raise ConfigError(f"--width: must be > 0, got {given['width']}")
    cfg.model_kwargs = {**cfg.model_kwargs, **given}
    accepted = model_options(cfg.model)
    if accepted is None:
        return
    unknown = sorted(set(cfg.model_kwargs) - set(accepted))
    if unknown:
        flags = ", ".join(f"--{k.replace('_', '-')}" if k in options else f"model_kwargs[{k!r}]" for k in unknown)
        raise ConfigError(f"model {cfg.model!r} does not take {flags}; it takes: {', '.join(accepted)}")
