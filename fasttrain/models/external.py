"""Models defined outside the zoo: timm's (`timm/<name>`) and a user's own nn.Module given to fasttrain.fit
(`module/<ClassName>`). Neither is registered one by one: each prefix has a resolver in the registry.

timm models are built untrained with `num_classes` set and every other model keyword passed to
`timm.create_model` (e.g. `drop_path_rate`, or `img_size` for a ViT). With `pretrained=True` (`--pretrained`)
timm loads its own pretrained weights, through its own mechanism (key filters, the classifier re-initialised
for another class count), from the local Hugging Face cache, where timm's download puts them: fasttrain
never downloads, so weights that are not there are one error saying where they belong. fasttrain's datasets are small images (CIFAR 32 px, Tiny ImageNet 64 px), where timm's ImageNet
stems (stride 4 before the first stage) leave a 1x1 map at the last stage of a ResNet. So by default
(`small_input=True`) a stem fasttrain knows is made stride 1, as CIFAR ResNets are:
  - ResNet family (`conv1` + a `maxpool`): the first stem convolution gets stride 1, the max-pool goes;
  - EfficientNet / MobileNet family (`conv_stem`): the stem convolution gets stride 1.
Other architectures are left exactly as timm builds them. For large images (e.g. Cars196 at 224 px) pass
`small_input=False` in model_kwargs to keep timm's stems. The weights are the same either way.

timm is an optional dependency, imported only when a `timm/` model is asked for.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

from ..choices import did_you_mean
from .registry import MODELS, ModelEntry, ModelError, UnknownModelError, register_resolver

TIMM_PREFIX = "timm/"
MODULE_PREFIX = "module/"
TIMM_INSTALL_HINT = "pip install timm  (or pip install 'fasttrain[timm]')"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub weights are named, preferred first


# ============================================================================ timm
def _import_timm(name: str):
    try:
        import timm  # optional: only `timm/` models need it
    except ImportError:
        raise UnknownModelError(f"model {name!r} needs timm, which is not installed here: {TIMM_INSTALL_HINT}") from None
    return timm


def _timm_entry(name: str) -> ModelEntry:
    timm = _import_timm(name)
    arch = name[len(TIMM_PREFIX):]
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models(), show=lambda c: TIMM_PREFIX + c)
        raise UnknownModelError(f"unknown timm model {arch!r} (timm {timm.__version__}){hint}; list timm's models with: "
                       f"python -c \"import timm; print(timm.list_models('*{arch[:4]}*'))\"")
    return ModelEntry(name, "timm", functools.partial(build_timm, arch))


def build_timm(arch: str, num_classes: int, small_input: bool = True, pretrained: bool = False,
               **timm_kwargs) -> nn.Module:
    """timm's `arch` with `num_classes` outputs, untrained or with timm's pretrained weights from the local
    cache; `small_input`: stride-1 stem (module doc)."""
    timm = _import_timm(TIMM_PREFIX + arch)
    if pretrained:
        timm_kwargs["pretrained_cfg_overlay"] = {"file": cached_pretrained_file(timm, arch)}
    model = timm.create_model(arch, pretrained=bool(pretrained), num_classes=num_classes, **timm_kwargs)
    if small_input:
        small_input_stem(model)
    return model


def cached_pretrained_file(timm, arch: str) -> str:
    """The file of timm's pretrained weights for `arch` (its default tag, or the one named, e.g.
    resnet18.tv_in1k) in the local Hugging Face cache; ModelError saying where they belong otherwise."""
    name = TIMM_PREFIX + arch
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise ModelError(f"model {name}: timm has no pretrained weights for it on the Hugging Face hub; start from "
                         f"a weight file instead: --init-from FILE")
    try:
        from huggingface_hub import constants, try_to_load_from_cache  # timm's own dependency
    except ImportError:
        raise ModelError(f"model {name} --pretrained: timm reads its weights through huggingface_hub, which is not "
                         f"installed here: pip install huggingface_hub") from None
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
    for filename in files:
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return found
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    raise ModelError(
        f"model {name} --pretrained: timm's weights {cfg.hf_hub_id} are not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}; set HF_HUB_CACHE to use another) and fasttrain never downloads; fetch them "
        f"where there is a network with python -c \"import timm; timm.create_model('{tag}', pretrained=True)\" "
        f"and copy that cache folder here, or pass a weight file with --init-from FILE")


def check_timm_kwargs(name: str, kwargs: dict, flag=str) -> None:
    """timm hands model options to the model's class, where one it does not take (or a bad value) fails deep
    inside with a TypeError: build the model on the meta device (no memory, no weights read) to refuse them
    first, naming each option as `flag(key)` writes it."""
    import torch

    options = {k: v for k, v in kwargs.items() if k != "pretrained"}  # the weights are not read here
    try:
        with torch.device("meta"):
            build_timm(name[len(TIMM_PREFIX):], num_classes=2, **options)
    except (TypeError, ValueError, AssertionError) as e:
        given = ", ".join(flag(k) for k in sorted(options)) or "no options"
        raise ModelError(f"model {name!r}: timm's model refuses the options {given} ({type(e).__name__}: {e}); "
                         f"timm/ models take timm.create_model's keyword arguments (e.g. drop_rate, "
                         f"drop_path_rate) and fasttrain's small_input and pretrained") from None


def small_input_stem(model: nn.Module) -> bool:
    """Makes a known ImageNet stem stride 1 (in place); False when the architecture has none we know."""
    if hasattr(model, "conv1") and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))  # deep stems: the first
        first.stride = (1, 1)
        model.maxpool = nn.Identity()
        return True
    if isinstance(getattr(model, "conv_stem", None), nn.Conv2d):
        model.conv_stem.stride = (1, 1)
        return True
    return False


# ============================================================================ a user's nn.Module
def _unbuildable(name: str) -> ModelEntry:
    raise UnknownModelError(f"model {name!r} was an nn.Module given to fasttrain.fit: it cannot be rebuilt by name; "
                   f"in Python, pass a new instance of that module: fasttrain.load(RUN_DIR, model=...), "
                   f"fasttrain.export(RUN_DIR, FORMAT, model=...)")


@contextmanager
def registered_module(module: nn.Module) -> Iterator[str]:
    """Registers `module` as `module/<ClassName>` while the block runs, so the trainer builds it like a
    zoo model (create_model returns this very module; it takes no model options). A run's config and
    checkpoint keep the name, and resolving it later explains that the module is needed to load it."""
    base = MODULE_PREFIX + type(module).__name__
    name = next(n for n in itertools.chain([base], (f"{base}-{i}" for i in itertools.count(2)))
                if n not in MODELS)

    def build(num_classes: int) -> nn.Module:
        return module

    MODELS[name] = ModelEntry(name, "module", build)
    try:
        yield name
    finally:
        MODELS.pop(name, None)


register_resolver(TIMM_PREFIX, _timm_entry)
register_resolver(MODULE_PREFIX, _unbuildable)
