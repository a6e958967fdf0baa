"""Where and how a run computes: the device, the autocast dtype, the compile warm-up, device names and
synchronisation. Shared by classification and retrieval training, evaluation and prediction."""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from .config import FP16_ON_CPU, ConfigError
from .words import count


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return dev


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. 'auto': bf16 on CUDA (fp16 on GPUs without bf16); on a CPU bf16
    only with AMX tiles, because without them oneDNN's bf16 convolutions are slower than fp32 (measured here)."""
    if mode == "off":
        return None
    if mode == "fp16" and device.type == "cpu":  # the one place the rule is checked: the device is known here
        raise ConfigError(f"--amp: {FP16_ON_CPU}")
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx else None


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """--compile/--no-compile when given; by default on for CUDA (where it pays for itself within an
    epoch) and off on a CPU (inductor gave no speed-up on the CPU nets measured, and takes ~15 s a graph)."""
    return flag if flag is not None else device.type == "cuda"


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with static shapes: each batch size the loop sees (the full one, a short last one)
    gets its own specialised graph, compiled by `compile_warmup`, instead of dynamo marking the batch
    dimension dynamic on the second size and running every later full batch through a dynamic graph."""
    return torch.compile(module, dynamic=False)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far; a difference across the training loop counts
    its recompiles (zero when the warm-up covered every shape and variant)."""
    if "torch._dynamo" not in sys.modules:  # nothing compiled yet; importing dynamo to say so takes 1.5 s
        return 0
    from torch._dynamo.utils import counters  # private, but stable since torch 2.0; no TORCH_LOGS needed

    return int(counters["stats"]["unique_graphs"])


def compile_warmup(step_model, model: torch.nn.Module, shapes: list[tuple[int, ...]], epochs: list[int | None],
                   dtype: torch.dtype, autocast, num_classes: int, device: torch.device) -> float:
    """A forward/backward of the compiled model on a dummy batch of each training shape (and, for models
    with `set_epoch`, in each given epoch's variant), so compilation happens outside the timed epochs;
    weights, buffers (BatchNorm statistics), gradients and RNG streams are restored afterwards, so the
    run itself is unchanged (the loop calls set_epoch itself). The largest batch goes first, so the full
    batches' graph is the first one compiled. Returns the seconds it took."""
    shapes = sorted(shapes, key=lambda s: s[0], reverse=True)
    # each shape and variant is one static graph of the same code; past dynamo's limit (8) it would
    # silently fall back to eager (progressive resizing x batch sizes can pass 8)
    from torch._dynamo import config as dynamo_config
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, len(shapes) * len(epochs) + 1)
    t0 = time.perf_counter()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    model.train()
    for epoch in epochs:
        if epoch is not None:
            model.set_epoch(epoch)
        for shape in shapes:
            x = torch.zeros(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, num_classes, (shape[0],), device=device)  # RNG restored below
            with autocast():
                loss = F.cross_entropy(step_model(x).float(), y)
            loss.backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    sync(device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device, processes: int = 1) -> str:
    """What trains, said once for the header and the summary: "cpu (4 threads)", "cpu (1 thread each, 2
    processes)", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3 (one each, 8 processes)"."""
    each = f"each, {count(processes, 'process', 'processes')}" if processes > 1 else ""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) + (f" (one {each})" if each else "")
    return f"cpu ({count(torch.get_num_threads(), 'thread')}{' ' + each if each else ''})"


# ----------------------------------------------------------------------------- will the model fit?
def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`: a GPU's free memory; for the CPU the kernel's
    MemAvailable, lowered to what a cgroup (container) limit leaves. None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f_limit, open(used) as f_used:
                free = min(free, int(f_limit.read()) - int(f_used.read()))
        except (OSError, ValueError):  # no such cgroup file, or "max" (no limit)
            continue
    return free


def check_model_fits(name: str, num_classes: int, model_kwargs: dict, device: torch.device) -> None:
    """Raises ConfigError, before anything is allocated, when the model's weights and gradients alone (fp32)
    exceed the memory available on `device`: the model is built on PyTorch's meta device (shapes only) and
    its parameters counted. A lower bound of what training needs, so it never refuses a model that fits."""
    from .models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, num_classes, **model_kwargs)
    except (RuntimeError, NotImplementedError):
        # a model whose constructor needs real tensors (it computes on them) cannot be sized on the meta
        # device: no estimate, and the real build just after raises its own error if the size is wrong
        return
    count = sum(p.numel() for p in model.parameters())
    need = count * 4 * 2
    available = available_memory(device)
    if available is None or need <= available:
        return
    options = " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                       for k, v in model_kwargs.items() if v is not None) or "its default size"
    raise ConfigError(f"{name} with {options}: {count:.3g} parameters need at least {need / 2**30:.3g} GiB for "
                      f"weights and gradients (fp32), but the {device.type} has {available / 2**30:.3g} GiB "
                      "available; choose a smaller model size (e.g. a smaller --width)")
