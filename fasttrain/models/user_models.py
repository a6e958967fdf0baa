"""Models from outside fasttrain, by name: a class in a Python file (`fasttrain run path/to/net.py:MyNet`, or
`model: path/to/net.py:MyNet` in a config file) and models an installed package registers under the
`fasttrain.models` entry-point group. The registry asks the two finders below for a name nothing else knows.

A model file is imported once per process (its folder goes on sys.path, as for a script, so it may import
its neighbours); the class is built as `MyNet(num_classes=N, **model_kwargs)`, so it must take `num_classes`,
and its other keyword arguments are its model options (`--set model_kwargs.depth=4`). A run records the
file's absolute path, so `--resume`, `eval` and `predict` find it from any directory.

A package registers models in its pyproject.toml:

    [project.entry-points."fasttrain.models"]
    mynet = "mypkg.models:build_mynet"      # fn(num_classes, **kw) -> nn.Module, registered as "mynet"
    mypkg = "mypkg.fasttrain_models"        # a module whose import registers models (@register_model)

Entry points are loaded the first time a name is not found (or models are listed), never at import, so a
broken or slow plugin costs nothing until it is needed; one that fails to load is reported when its entry
point's name is asked for.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import inspect
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import torch.nn as nn

from ..choices import did_you_mean
from .registry import FINDERS, MODELS, ModelEntry, ModelError, UnknownModelError
from .registry import list_models as registered_models

ENTRY_POINT_GROUP = "fasttrain.models"
FILE_MODEL = re.compile(r"^(?P<file>.+\.py):(?P<cls>[A-Za-z_]\w*)$")
_modules: dict[str, ModuleType] = {}  # absolute path -> the module imported from it
_plugin_errors: dict[str, str] = {}  # entry point name -> why it did not load
_plugins_loaded = False


# ============================================================================ path/to/file.py:ClassName
def is_file_model(name: str) -> bool:
    return FILE_MODEL.match(name) is not None


def absolute_model_name(name: str) -> str:
    """`net.py:MyNet` -> `/abs/path/net.py:MyNet` (other names unchanged): what a run records."""
    m = FILE_MODEL.match(name)
    return f"{os.path.abspath(m['file'])}:{m['cls']}" if m else name


def _find_file_model(name: str) -> ModelEntry | None:
    m = FILE_MODEL.match(name)
    if m is None:
        return None
    path, cls_name = Path(m["file"]), m["cls"]
    module = _import_file(path, name)
    cls = getattr(module, cls_name, None)
    if cls is None:
        modules = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                   and v.__module__ == module.__name__]
        raise UnknownModelError(f"model {name!r}: {path} defines no {cls_name!r}{did_you_mean(cls_name, modules)}"
                                f"; its nn.Module classes: {', '.join(modules) or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"model {name!r}: {cls_name} in {path} is a {type(cls).__name__}, not an nn.Module class")
    params = inspect.signature(cls).parameters
    if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ModelError(f"model {name!r}: {cls_name}.__init__ must take num_classes (fasttrain passes the "
                         f"dataset's class count), e.g. def __init__(self, num_classes: int = 10)")

    def build(num_classes: int, **kwargs) -> nn.Module:
        return cls(num_classes=num_classes, **kwargs)

    build.__signature__ = inspect.signature(cls)  # its model options are the class's keyword arguments
    return ModelEntry(name, "file", build)


def _import_file(path: Path, name: str) -> ModuleType:
    if path.suffix != ".py" or not path.is_file():
        raise UnknownModelError(f"model {name!r}: no such file {path}; give a Python file and a class in it, "
                                f"e.g. fasttrain run models/mynet.py:MyNet")
    key = os.path.abspath(path)
    if key not in _modules:
        module_name = f"fasttrain_user_model_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, key)
        module = importlib.util.module_from_spec(spec)
        folder = os.path.dirname(key)
        if folder not in sys.path:
            sys.path.append(folder)  # its neighbours import, as for a script
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code: one line saying which file and what it raised
            sys.modules.pop(module_name, None)
            where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
            raise ModelError(f"model {name!r}: importing {path} raised {type(e).__name__}{where}: {e}") from None
        _modules[key] = module
    return _modules[key]


# ============================================================================ installed packages
def load_plugins() -> None:
    """Loads every `fasttrain.models` entry point once: a module registers its models by being imported, a
    callable is registered under the entry point's name."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # another package's code: kept, and named when one of its models is asked for
            _plugin_errors[ep.name] = f"{ep.value} raised {type(e).__name__}: {e}"
            continue
        if not isinstance(obj, ModuleType) and ep.name not in MODELS:
            if not callable(obj):
                _plugin_errors[ep.name] = f"{ep.value} is a {type(obj).__name__}, not a callable or a module"
                continue
            MODELS[ep.name] = ModelEntry(ep.name, ep.dist.name if ep.dist else "plugin", obj)


def _find_plugin_model(name: str) -> ModelEntry | None:
    load_plugins()
    if name in _plugin_errors:
        raise ModelError(f"model {name!r}: the installed entry point ({ENTRY_POINT_GROUP}) did not load: "
                         f"{_plugin_errors[name]}")
    return MODELS.get(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Every registered model name (the zoo and installed packages' models), sorted; `pattern` filters with
    shell wildcards as timm's list_models does, e.g. list_models("resnet*"). timm's own are `timm/<name>`."""
    load_plugins()
    names = registered_models()
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


FINDERS.extend([_find_file_model, _find_plugin_model])
