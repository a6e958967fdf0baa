"""fasttrain: train image classifiers as fast as the hardware allows."""

import importlib as _importlib
import os as _os

__version__ = "0.1.0"

# pipelines/ and cuda_ext/ sit beside fasttrain/ in the source tree (the repository's fixed layout) and an
# install maps them to fasttrain.pipelines / fasttrain.cuda_ext (pyproject's package-dir). Adding the
# checkout's root to this package's search path gives a plain source checkout the same two subpackages,
# so `PYTHONPATH=. python -m fasttrain ...` runs with nothing installed (the GPU machine has no pip index).
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "pipelines")) and _os.path.isfile(
        _os.path.join(_root, "pipelines", "__init__.py")):
    __path__.append(_root)  # noqa: F821 (a package's __path__)

# The Python API (docs/python_api.md). It lives in fasttrain.api, which imports torch and the trainer, so
# it is loaded on first use (PEP 562 module __getattr__): `import fasttrain` and `python -m fasttrain --help`
# stay cheap and import torch only when a command needs it. `from fasttrain import fit` works the same.
_API = {"fit": "api", "load": "api", "predict": "api", "FitResult": "api", "Classifier": "api",
        "Predictions": "api", "export": "exporting", "create_model": "models", "list_models": "models"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(_importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'fasttrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
