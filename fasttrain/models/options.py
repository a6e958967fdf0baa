"""The model options a user sets by name (`fasttrain run MODEL --width 0.5 --activation mish`), stored in
RunConfig.model_kwargs (their table, with types and help, is choices.MODEL_OPTIONS): the one check of a
model's keyword arguments (values, and names against what the chosen model takes) before any training starts."""

from __future__ import annotations

from typing import Any

from ..choices import ACTIVATIONS, ATTENTION_BLOCKS, MODEL_OPTIONS, PLACEMENTS
from .external import TIMM_PREFIX, check_timm_kwargs
from .registry import ModelError, model_options


def _flag(key: str) -> str:
    """How the user set it: an option (--drop-path) or any model_kwargs key (a recipe, --set, a file)."""
    where = f"model_kwargs.{key}"
    return f"--{key.replace('_', '-')} ({where})" if key in MODEL_OPTIONS else where


def check_model_kwargs(model: str, kwargs: dict[str, Any]) -> None:
    """Raises ModelError naming the option when a value is out of range or the model does not take it."""
    checks = {
        "activation": (lambda v: v in ACTIVATIONS, f"must be one of {' | '.join(ACTIVATIONS)}"),
        "drop_path": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "must lie in [0, 1)"),
        "image_size": (lambda v: isinstance(v, int) and v >= 8, "must be >= 8 pixels"),
        "width": (lambda v: isinstance(v, (int, float)) and v > 0, "must be > 0"),
        "attention": (lambda v: v in ATTENTION_BLOCKS, f"must be one of {' | '.join(ATTENTION_BLOCKS)}"),
        "placement": (lambda v: v in PLACEMENTS, f"must be one of {' | '.join(PLACEMENTS)}"),
        "pretrained": (lambda v: isinstance(v, bool), "must be true or false"),
    }
    for key, value in kwargs.items():
        if key in checks and value is not None and not checks[key][0](value):
            raise ModelError(f"{_flag(key)}: {checks[key][1]}, got {value!r}")
    accepted = model_options(model)
    if accepted is None:  # a model taking any keyword: timm's are checked by building one on the meta device
        if model.startswith(TIMM_PREFIX):
            check_timm_kwargs(model, kwargs, flag=_flag)
        return
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        flags = ", ".join(_flag(k) for k in unknown)
        raise ModelError(f"model {model!r} does not take {flags}; it takes: {', '.join(accepted)}")


def merge_model_options(cfg: Any, **options: Any) -> None:
    """Put the options that were given (not None) into cfg.model_kwargs, then check every model kwarg
    (recipe ones too) against the model."""
    given = {k: v for k, v in options.items() if v is not None}
    check_model_kwargs(cfg.model, {**cfg.model_kwargs, **given})
    cfg.model_kwargs = {**cfg.model_kwargs, **given}
