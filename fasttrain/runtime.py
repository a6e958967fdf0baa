"""Where and how a run computes: the device, the autocast dtype, the compile warm-up, device names and
synchronisation. Shared by classification and retrieval training, evaluation and prediction."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .config import ConfigError


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
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx else None


def amp_name(dtype: torch.dtype | None) -> str:
    """The one spelling of an autocast dtype, in config.json, summary.json and the console: bf16 | fp16 | off."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[dtype]


def compile_warmup(step_model, model: torch.nn.Module, shapes: list[tuple[int, ...]], epochs: list[int | None],
                   dtype: torch.dtype, autocast, num_classes: int, device: torch.device) -> float:
    """A forward/backward of the compiled model on a dummy batch of each training shape (and, for models
    with `set_epoch`, in each given epoch's variant), so compilation happens outside the timed epochs;
    weights, buffers (BatchNorm statistics), gradients and RNG streams are restored afterwards, so the
    run itself is unchanged (the loop calls set_epoch itself). Returns the seconds it took."""
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
