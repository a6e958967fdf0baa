"""Reproducibility: deterministic kernels (`--deterministic`) and every global random stream of a process,
captured as tensors and plain values (so a checkpoint can hold them and be read with weights_only=True) and
restored: torch CPU, every CUDA device, numpy's global generator, Python's `random`."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch


_DETERMINISM_SET_BY_US = False


def set_deterministic(enabled: bool, device: torch.device) -> None:
    """`--deterministic`: deterministic kernels everywhere, cuDNN autotuning off.

    On a CPU this makes runs bit-identical (same seed, same thread count; tested). On CUDA some backward
    kernels (e.g. adaptive pooling, index_add) have no deterministic version: torch then warns instead of
    failing (warn_only), so GPU runs are as reproducible as torch allows, not guaranteed bit-identical.
    A later run in the same process without the flag turns off what an earlier one turned on."""
    global _DETERMINISM_SET_BY_US
    if not enabled:
        if _DETERMINISM_SET_BY_US:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
            _DETERMINISM_SET_BY_US = False
        return
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace for deterministic GEMMs; must be set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    _DETERMINISM_SET_BY_US = True


def capture_rng() -> dict:
    """Every global random stream of this process, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(_as_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(cuda)} devices, this process sees "
                f"{torch.cuda.device_count()}: CUDA random streams are not restored",
                stacklevel=2,
            )


def _as_tuples(x):
    """random.setstate wants the nested tuples back (a round trip may turn them into lists)."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
