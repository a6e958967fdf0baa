"""Put this directory first on PYTHONPATH to make the optional backends (ffcv, NVIDIA DALI) unimportable,
as on a machine without them: importing them raises ImportError, like a package that is not installed.
Used by tests/test_gpu_check.py and to check that the suite skips (never errors) without them."""

import importlib.abc
import sys

HIDDEN = ("ffcv", "nvidia.dali")


class _HideOptionalBackends(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/hide_backends)", name=name)
        return None


sys.meta_path.insert(0, _HideOptionalBackends())
