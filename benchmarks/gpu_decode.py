"""GPU JPEG decode + crop-resize throughput (a step of `make gpu-check`, or alone):

    PYTHONPATH=. python benchmarks/gpu_decode.py --what kernel --out k.json   # crop kernel GB/s vs a D2D copy
    PYTHONPATH=. python benchmarks/gpu_decode.py --what nvjpeg --out n.json   # img/s at 224 px, bytes -> batch
    ... --dry-run                                                            # CPU stand-ins, tiny sizes

kernel: one batch of photos decoded on the GPU once, then torch.ops.fasttrain.crop_resize on
RandomResizedCrop boxes (fasttrain/data/crops.py) to res x res, timed with CUDA events. Bytes moved =
the boxes' pixels read (3 bytes each; the taps past a box edge are not counted) + the batch written;
the baseline is a device-to-device copy of as many bytes (read + write).
nvjpeg: JPEG bytes in host memory -> torchvision.io.decode_jpeg(list, device="cuda") -> the kernel ->
(B, res, res, 3) on the GPU, as the streaming pipeline's nvjpeg decoder does it (pipelines/stream_gpu.py);
also decode alone. DALI (image_slice + resize + flip) too where it is installed.
The dry run (no GPU): torchvision's CPU decode_jpeg and crop_resize.h's host path (g++, ctypes) stand in
for nvJPEG and the kernel, at tiny sizes: it checks the step runs, its numbers mean nothing.

Photos: the JPEGs under --photos DIR (default .data/photo-set, e.g. written by benchmarks/make_photo_set.py
and carried to the GPU machine), else cut from scikit-image's colour photos at random sizes 160-900 px,
else CIFAR-10 JPEGs (.data/cifar10-jpeg) scaled up to those sizes; the JSON says which.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PHOTO_DIR = ROOT / ".data" / "photo-set"
CIFAR_JPEG = ROOT / ".data" / "cifar10-jpeg" / "test.tar.gz"


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's SOF marker."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + length
    raise ValueError("no SOF marker: not a JPEG")


def _encode_at_random_sizes(sources: list[torch.Tensor], n: int, rng: np.random.Generator) -> list[bytes]:
    """n JPEGs (quality 90): random crops of the (3, H, W) sources scaled so the longer side is 160-900 px."""
    from torchvision.io import encode_jpeg

    out = []
    for k in range(n):
        src = sources[k % len(sources)]
        h, w = src.shape[1:]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        side = int(rng.integers(160, 901))
        scale = side / max(ch, cw)
        size = [max(16, round(ch * scale)), max(16, round(cw * scale))]
        img = torch.nn.functional.interpolate(src[None, :, y:y + ch, x:x + cw].float(), size=size, mode="bilinear",
                                              antialias=True, align_corners=False)
        out.append(encode_jpeg(img[0].round().clamp(0, 255).to(torch.uint8), quality=90).numpy().tobytes())
    return out


def photo_jpegs(n: int, photos: Path, seed: int = 0) -> tuple[list[bytes], str]:
    """n JPEG files (cycling through the set when it is smaller) and where they came from."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")) if photos.is_dir() else []
    if files:
        data = [p.read_bytes() for p in files[:n]]
        return [data[k % len(data)] for k in range(n)], f"{len(data)} JPEGs from {photos}"
    try:
        from skimage import data as skdata

        names = ("astronaut", "coffee", "chelsea", "rocket")  # shipped with scikit-image (no download)
        sources = [torch.from_numpy(np.ascontiguousarray(getattr(skdata, nm)()[..., :3])).permute(2, 0, 1)
                   for nm in names if hasattr(skdata, nm)]
        return _encode_at_random_sizes(sources, n, rng), "scikit-image photos cut at random sizes 160-900 px"
    except ImportError:
        pass
    if CIFAR_JPEG.is_file():
        from torchvision.io import decode_jpeg

        sources = []
        with tarfile.open(CIFAR_JPEG) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg"):
                    sources.append(decode_jpeg(torch.frombuffer(bytearray(tar.extractfile(m).read()), dtype=torch.uint8)))
                if len(sources) >= 64:
                    break
        return _encode_at_random_sizes(sources, n, rng), "CIFAR-10 JPEGs scaled up to 160-900 px (blurry)"
    raise RuntimeError(f"no photos: put JPEGs in {photos}, install scikit-image, or carry .data/cifar10-jpeg")


def crop_params(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RandomResizedCrop boxes (y0, x0, h, w) and flips for images of these sizes (epoch 0)."""
    from fasttrain.data.crops import flip_flags, rrc_params

    hs = np.array([s[0] for s in sizes])
    ws = np.array([s[1] for s in sizes])
    ids = np.arange(len(sizes))
    top, left, ch, cw = rrc_params(hs, ws, ids, seed, 0)
    return np.stack([top, left, ch, cw], 1).astype(np.float32), flip_flags(ids, seed, 0)


def _bytes_tensor(j: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(j), dtype=torch.uint8)


class _Timer:
    """Seconds per call of fn, median of `repeats` runs of `iters` calls (CUDA events on a GPU)."""

    def __init__(self, gpu: bool):
        self.gpu = gpu

    def __call__(self, fn, iters: int, repeats: int) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            if self.gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            if self.gpu:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / iters)
        return sorted(times)[len(times) // 2]


def bench_kernel(args, jpegs: list[bytes]) -> dict:
    from torchvision.io import decode_jpeg

    gpu = not args.dry_run
    boxes, flips = crop_params([jpeg_size(j) for j in jpegs])
    timer = _Timer(gpu)
    if gpu:
        from fasttrain.cuda_ext import load

        load()
        images = decode_jpeg([_bytes_tensor(j) for j in jpegs], device="cuda")
        b, f = torch.from_numpy(boxes), torch.from_numpy(flips)

        def crop():
            return torch.ops.fasttrain.crop_resize(images, b, f, args.res)
    else:
        from fasttrain.cuda_ext.crop_host import build_host_library, host_crop_resize

        images = [decode_jpeg(_bytes_tensor(j)) for j in jpegs]
        lib = build_host_library(Path(tempfile.mkdtemp(prefix="fasttrain_crop_host_")))

        def crop():
            return host_crop_resize(lib, images, boxes, flips, args.res)
    n = len(jpegs)
    read = int(sum(min(bh, im.shape[1]) * min(bw, im.shape[2]) * 3 for (_, _, bh, bw), im in zip(boxes, images)))
    written = n * args.res * args.res * 3
    t_kernel = timer(crop, args.iters, args.repeats)
    src = torch.empty(read + written, dtype=torch.uint8, device="cuda" if gpu else "cpu")
    dst = torch.empty_like(src)
    t_copy = timer(lambda: dst.copy_(src), args.iters, args.repeats)
    kernel_gb_s = (read + written) / t_kernel / 1e9
    copy_gb_s = 2 * (read + written) / t_copy / 1e9
    return {"what": "crop kernel" if gpu else "crop_resize.h host path (CPU stand-in)", "images": n,
            "res": args.res, "bytes_read": read, "bytes_written": written, "kernel_ms": round(t_kernel * 1e3, 3),
            "kernel_imgs_per_s": round(n / t_kernel), "kernel_gb_s": round(kernel_gb_s, 2),
            "copy_gb_s": round(copy_gb_s, 2), "kernel_vs_copy": round(kernel_gb_s / copy_gb_s, 3)}


def bench_nvjpeg(args, jpegs: list[bytes]) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    gpu = not args.dry_run
    batches = [jpegs[i:i + args.batch_size] for i in range(0, len(jpegs), args.batch_size)]
    params = [crop_params([jpeg_size(j) for j in b], seed=k) for k, b in enumerate(batches)]
    timer = _Timer(gpu)
    if gpu:
        from fasttrain.pipelines.stream_gpu import NvjpegCropDecoder

        decoder = NvjpegCropDecoder("cuda")

        def decode_only():
            for b in batches:
                decode_jpeg([_bytes_tensor(j) for j in b], mode=ImageReadMode.RGB, device="cuda")

        def end_to_end():
            for b, (boxes, flips) in zip(batches, params):
                decoder(b, boxes, flips, args.res)
    else:
        from fasttrain.cuda_ext.crop_host import build_host_library, host_crop_resize

        lib = build_host_library(Path(tempfile.mkdtemp(prefix="fasttrain_crop_host_")))

        def decode_only():
            for b in batches:
                [decode_jpeg(_bytes_tensor(j), mode=ImageReadMode.RGB) for j in b]

        def end_to_end():
            for b, (boxes, flips) in zip(batches, params):
                images = [decode_jpeg(_bytes_tensor(j), mode=ImageReadMode.RGB) for j in b]
                host_crop_resize(lib, images, boxes, flips, args.res)
    n = len(jpegs)
    t_decode = timer(decode_only, 1, args.repeats)
    t_all = timer(end_to_end, 1, args.repeats)
    out = {"what": "nvjpeg (decode_jpeg on cuda) + crop kernel" if gpu else
           "torchvision CPU decode_jpeg + crop_resize.h host path (CPU stand-in)",
           "images": n, "batch_size": args.batch_size, "res": args.res,
           "mean_jpeg_kib": round(sum(map(len, jpegs)) / n / 1024, 1),
           "decode_imgs_per_s": round(n / t_decode), "imgs_per_s": round(n / t_all)}
    if gpu:
        try:
            from fasttrain.pipelines.stream_gpu import DaliCropDecoder

            dali = DaliCropDecoder("cuda")
            out["dali_imgs_per_s"] = round(n / timer(
                lambda: [dali(b, bx, fl, args.res) for b, (bx, fl) in zip(batches, params)], 1, args.repeats))
        except Exception as e:  # DALI is optional (absent on the lent GPU machines)
            out["dali"] = f"not measured: {type(e).__name__}: {str(e)[:200]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", choices=("kernel", "nvjpeg"), required=True)
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--dry-run", action="store_true", help="CPU stand-ins at tiny sizes (no GPU)")
    ap.add_argument("--photos", type=Path, default=PHOTO_DIR, help="a folder of JPEGs (default .data/photo-set)")
    ap.add_argument("--images", type=int, default=None, help="images (default 1024 on a GPU, 8 in a dry run)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--res", type=int, default=None, help="output side (default 224; 32 in a dry run)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--force", action="store_true", help="replace a file at --out that fasttrain did not write")
    args = ap.parse_args()
    from fasttrain.outputs import claim_or_exit, write_json

    [target] = claim_or_exit(args.out, option="--out", force=args.force)  # before any work (fasttrain.outputs)
    if args.dry_run:
        args.images, args.res = args.images or 8, args.res or 32
        args.iters, args.repeats, args.batch_size = 1, 1, min(args.batch_size, 4)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU visible; use --dry-run for the CPU stand-ins")
        args.images, args.res = args.images or (256 if args.what == "kernel" else 1024), args.res or 224
    t0 = time.perf_counter()
    jpegs, source = photo_jpegs(args.images, args.photos)
    setup_s = time.perf_counter() - t0
    result = (bench_kernel if args.what == "kernel" else bench_nvjpeg)(args, jpegs)
    result.update(photos=source, photo_setup_s=round(setup_s, 1), dry_run=args.dry_run,
                  device=torch.cuda.get_device_name(0) if not args.dry_run else "cpu")
    write_json(target, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
