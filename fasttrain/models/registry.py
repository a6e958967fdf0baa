"""Model registry: `@register_model` entry points keyed by CLI name; `create_model` builds one.

The registry imports no model family: `fasttrain.models` (the package) imports every family, which
registers itself here, as timm does. Errors are ModelError (a ValueError); the CLI shows their message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from ..choices import did_you_mean


class ModelError(ValueError):
    """An unknown model name or an option the model does not take; the message says what to do."""


class UnknownModelError(ModelError, KeyError):
    """A name no family registered (a KeyError too, for callers that look models up like a dict)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    fn: Callable[..., nn.Module]


MODELS: dict[str, ModelEntry] = {}
# Names under a prefix ("timm/resnet18") are resolved on demand instead of registered one by one:
# prefix -> fn(name) -> ModelEntry, raising KeyError with the reason (models/external.py).
RESOLVERS: dict[str, Callable[[str], ModelEntry]] = {}
# Asked, in order, for a name that is neither registered nor under a prefix: a model file
# (`path/file.py:ClassName`) and installed packages' `fasttrain.models` entry points (models/user_models.py);
# fn(name) -> ModelEntry, or None when the name is not theirs.
FINDERS: list[Callable[[str], ModelEntry | None]] = []


def register_model(name: str | None = None, *, family: str = "misc"):
    """Register `fn(num_classes, **kw) -> nn.Module` under `name` (default: the function's name)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        MODELS[key] = ModelEntry(key, family, fn)
        return fn

    return wrap


def register_resolver(prefix: str, resolver: Callable[[str], ModelEntry]) -> None:
    """Names starting with `prefix` (e.g. "timm/") are built by `resolver(name)`."""
    RESOLVERS[prefix] = resolver


def list_models() -> list[str]:
    return sorted(MODELS)


def get_entry(name: str) -> ModelEntry:
    prefix = name.split("/", 1)[0] + "/"
    if name not in MODELS and prefix in RESOLVERS:
        return RESOLVERS[prefix](name)
    for find in FINDERS if name not in MODELS else ():
        entry = find(name)
        if entry is not None:
            return entry
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}{did_you_mean(name, MODELS)} (`fasttrain zoo` lists all "
                                f"{len(MODELS)})")
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
