"""Fused augmentation vs the unfused PyTorch reference, in one run: img/s and effective GB/s.

Question: how much faster is the one-pass op (numba on the CPU, the CUDA kernel on a GPU) than the
reference's chain of PyTorch ops, and how close does it get to the memory system's limit?

Effective bandwidth counts the bytes the op must move at minimum: the uint8 batch read once
(N*H*W*C bytes) plus the output written once (N*H*W*C * itemsize), divided by the time. On a GPU the
same run times a device-to-device copy (read + write of the output's size), the ceiling to compare with.
Parameters are sampled before timing (sampling is not part of the op). GPU times use CUDA events.

    python benchmarks/augment_throughput.py                      # the tensor's device: cuda if present
    python benchmarks/augment_throughput.py --device cpu --batch-size 512 --size 32 --dtype bf16
On a GPU the defaults are 16384 images at 32 and 64 px: smaller batches measure launch overhead, not
bandwidth, and the fraction-of-copy figure means nothing there. On a CPU: 512 images at 32 px.
Writes benchmarks/results/augment_throughput-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a source checkout
from fasttrain.augment import AugmentConfig, AugmentSampler, apply, backend_for, norm_constants  # noqa: E402
from fasttrain.augment.fused import fused_apply  # noqa: E402
from fasttrain.outputs import claim_or_exit, write_json  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# name -> augmentation; "airbench" is airbench94's (translate 2 + flip), "myrtle" ResNet9's 24-epoch one
SCENARIOS = {
    "airbench": AugmentConfig(crop_pad=2, pad_mode="reflect", flip=True),
    "myrtle": AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True, cutout=8),
    "mixup": AugmentConfig(crop_pad=4, pad_mode="zero", flip=True, cutout=8, mixup_alpha=1.0),
    "cutmix": AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True, cutmix_alpha=1.0),
}


class Cycle:
    """Returns the pre-sampled parameter sets in turn (sampling stays outside the timed op)."""

    def __init__(self, items: list):
        self.items, self.i = items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def timer(device: torch.device, fn, iters: int, repeats: int) -> float:
    """Median over `repeats` of the mean seconds per call over `iters` calls (after a warm-up)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="images per call (default: 16384 on a GPU, 512 on a CPU)")
    ap.add_argument("--size", type=int, nargs="+", default=None,
                    help="image side(s), e.g. 32 64 (default: 32 64 on a GPU, 32 on a CPU)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--iters", type=int, default=0, help="calls per timing (0: 20 on CPU, 200 on GPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/augment_throughput-<device>.json)")
    ap.add_argument("--force", action="store_true", help="replace a file at --out that fasttrain did not write")
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"augment_throughput-{re.sub(r'[^A-Za-z0-9]+', '_', device_name(device)).strip('_')}.json")
    [target] = claim_or_exit(out, option="--out", force=args.force)  # before any work (fasttrain.outputs)
    fused_backend = backend_for(device, "fused")  # raises if the fused op is unavailable: no silent fallback
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (16384 if gpu else 512)
    args.size = args.size or ([32, 64] if gpu else [32])
    iters = args.iters or (200 if device.type == "cuda" else 20)
    dtype = DTYPES[args.dtype]
    scale, bias = norm_constants([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], device)
    rows = []
    for side in args.size:
        n, h, w, c = args.batch_size, side, side, 3
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randint(0, 256, (n, h, w, c), generator=gen, device=device, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=gen, device=device)
        moved = n * h * w * c * (1 + dtype.itemsize)  # read the batch once, write the output once
        copy_gbps = None
        if device.type == "cuda":
            src = torch.empty(n * h * w * c * dtype.itemsize, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            t_copy = timer(device, lambda dst=dst, src=src: dst.copy_(src), iters, args.repeats)
            copy_gbps = 2 * src.numel() / t_copy / 1e9
        for name in args.scenarios:
            sampler = AugmentSampler(SCENARIOS[name], seed=0, device=device)
            cycle = Cycle([sampler.sample(n, h, w) for _ in range(8)])
            t_ref = timer(device, lambda x=x, labels=labels, cycle=cycle: apply(x, labels, cycle(), scale, bias, dtype),
                          iters, args.repeats)
            t_fused = timer(device, lambda x=x, labels=labels, cycle=cycle: fused_apply(x, labels, cycle(), scale, bias,
                                                                                          dtype), iters, args.repeats)
            row = {"scenario": name, "batch": n, "size": f"{h}x{w}", "dtype": args.dtype,
                   "reference_img_s": round(n / t_ref), "fused_img_s": round(n / t_fused),
                   "reference_gb_s": round(moved / t_ref / 1e9, 2), "fused_gb_s": round(moved / t_fused / 1e9, 2),
                   "speedup": round(t_ref / t_fused, 2)}
            if copy_gbps is not None:
                row["d2d_copy_gb_s"] = round(copy_gbps, 1)
                row["fused_vs_copy"] = round(moved / t_fused / 1e9 / copy_gbps, 3)
            rows.append(row)
            print("  ".join(f"{k_}={v}" for k_, v in row.items()), flush=True)

    result = {"device": device_name(device), "fused_backend": fused_backend, "torch": torch.__version__,
              "iters": iters, "repeats": args.repeats, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows,
              "note": "effective GB/s = (uint8 batch read once + output written once) / time"}
    write_json(target, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
