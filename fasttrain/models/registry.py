"""Model registry: `@register_model` entry points keyed by CLI name; `create_model` builds one."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    fn: Callable[..., nn.Module]
    default_recipe: str | None = None


MODELS: dict[str, ModelEntry] = {}
# Names under a prefix ("timm/resnet18") are resolved on demand instead of registered one by one:
# prefix -> fn(name) -> ModelEntry, raising KeyError with the reason (models/external.py).
RESOLVERS: dict[str, Callable[[str], ModelEntry]] = {}


def register_model(name: str | None = None, *, family: str = "misc", default_recipe: str | None = None):
    """Register `fn(num_classes, **kw) -> nn.Module` under `name` (default: the function's name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        MODELS[key] = ModelEntry(key, family, fn, default_recipe)
        return fn

    return wrap


def register_resolver(prefix: str, resolver: Callable[[str], ModelEntry]) -> None:
    """Names starting with `prefix` (e.g. "timm/") are built by `resolver(name)`."""
    RESOLVERS[prefix] = resolver


def _ensure_loaded() -> None:
    from . import zoo  # noqa: F401  (importing registers every family)


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(MODELS)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    prefix = name.split("/", 1)[0] + "/"
    if name not in MODELS and prefix in RESOLVERS:
        return RESOLVERS[prefix](name)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; `fasttrain zoo` lists them: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build model `name`. Keyword arguments left as None are dropped, so callers can pass every CLI
    option and the model's own defaults apply; an option the model does not take raises."""
    entry = get_entry(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(entry.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"model {name!r} does not take option(s) {unknown}; it takes {sorted(params)[1:]}")
    return entry.fn(num_classes=num_classes, **kwargs)


def model_options(name: str) -> list[str] | None:
    """Keyword options model `name` takes besides num_classes (None: it takes any)."""
    params = inspect.signature(get_entry(name).fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [k for k in params if k != "num_classes"]
