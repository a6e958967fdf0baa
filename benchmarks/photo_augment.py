"""How much faster are the batched photo augmentations (fasttrain/augment/photo.py) than torchvision's
transforms applied image by image, the way a DataLoader worker runs them?

    python benchmarks/photo_augment.py [--device cpu|cuda] [--batch-size 256] [--size 224] [--repeats 3]

Both sides do the same work per image: RandAugment(num_ops=2, magnitude=9) (or --policy trivialaugment), then
ColorJitter(0.4, 0.4, 0.4, 0.1), then RandomErasing(p=0.25), on a uint8 batch of real photo crops
(scikit-image's astronaut, coffee, chelsea, rocket). The per-image side is torchvision.transforms.v2 in a
Python loop over the batch's images; the batched side is PhotoAugment on the whole (N, H, W, 3) batch. Prints
the median seconds of each and their ratio; writes benchmarks/results/photo_augment-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fasttrain.augment.photo import PhotoAugment, PhotoConfig  # noqa: E402
from fasttrain.outputs import claim_or_exit, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def photo_batch(n: int, size: int) -> torch.Tensor:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        t, left = rng.integers(0, p.shape[0] - size + 1), rng.integers(0, p.shape[1] - size + 1)
        out.append(p[t : t + size, left : left + size])
    return torch.from_numpy(np.stack(out))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, device: torch.device, repeats: int) -> list[float]:
    """Median seconds of each function, the functions taking turns (a shared machine's load drifts)."""
    for fn in fns:
        fn()  # warm-up (allocations, CUDA kernels)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--policy", default="randaugment", choices=("randaugment", "trivialaugment"))
    ap.add_argument("--force", action="store_true", help="replace a result file fasttrain did not write")
    args = ap.parse_args()
    [target] = claim_or_exit(RESULTS / f"photo_augment-{args.device.split(':')[0]}.json", option="--device",
                             force=args.force)  # before any work (fasttrain.outputs)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = photo_batch(args.batch_size, args.size).to(device)
    ids = np.arange(args.batch_size)
    aug = PhotoAugment(PhotoConfig(auto_augment=args.policy, num_ops=2, magnitude=9,
                                   color_jitter=(0.4, 0.4, 0.4, 0.1), random_erasing=0.25), seed=0)
    policy = v2.RandAugment(2, 9) if args.policy == "randaugment" else v2.TrivialAugmentWide()
    per_image = v2.Compose([policy, v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.RandomErasing(p=0.25, value=0)])
    chw = x.permute(0, 3, 1, 2)

    def loop() -> None:
        for i in range(len(chw)):
            per_image(chw[i])

    batched_s, loop_s = timed([lambda: aug(x, ids=ids, epoch=0), loop], device, args.repeats)
    result = {"device": str(device), "batch": [args.batch_size, 3, args.size, args.size], "policy": args.policy,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "batched_s": round(batched_s, 4), "per_image_loop_s": round(loop_s, 4),
              "speedup": round(loop_s / batched_s, 2), "batched_img_per_s": round(args.batch_size / batched_s, 1),
              "per_image_img_per_s": round(args.batch_size / loop_s, 1)}
    print(f"{args.policy} + jitter + erasing, {args.batch_size}x3x{args.size}x{args.size} uint8 on {device} "
          f"({torch.get_num_threads()} threads): batched {batched_s:.3f} s, per-image torchvision loop "
          f"{loop_s:.3f} s, ratio {loop_s / batched_s:.2f}x")
    write_json(target, result)


if __name__ == "__main__":
    main()
