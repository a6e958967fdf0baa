"""Data pipelines, ours and the peers' own, on the same images with the same augmentation, in one run.

Question: how many training-ready images per second does each way of feeding a model deliver, from the
converted dataset to a normalised float batch in the trainer's layout? Augmentation everywhere: random
translate by up to 4 px with zero padding, horizontal flip p=0.5, one 8x8 cutout, per-channel normalise.

    ours (pipelines/ + fasttrain.augment.augment_batch, the fused op; the number includes augmentation)
      tensor        whole uint8 dataset resident on the device (CPU here), index_select per batch
      ffcv          ffcv Loader decoding a raw .beton to uint8, then augment_batch
      dali          DALI file reader + JPEG decoder (CPU decoder, or nvJPEG "mixed" on a GPU), then augment_batch
      torchvision   Dataset + DataLoader(num_workers=2) decoding JPEGs (PIL), then augment_batch
    peers (each library's own augmentation, as their users write it)
      ffcv-raw          Loader with RandomTranslate, RandomHorizontalFlip, Cutout, NormalizeImage
      dali-raw          fn.slice (pad), crop_mirror_normalize (mirror), fn.erase
      torchvision-raw   ImageFolder + DataLoader(num_workers=2): RandomCrop(pad 4), RandomHorizontalFlip,
                        ToTensor, Normalize, RandomErasing (8x8) -- the baseline most users start from
      torchvision-mem   the same transforms on a Dataset over the in-memory uint8 array (no JPEG decode)

The images: a seeded random subset (--n) of the converted CIFAR-10 train split (`data/cifar10`), written
once per format under data/bench/ (ffcv raw .beton = the same pixels; dali/ImageFolder = JPEG q95 of them).
Each loop runs --warmup untimed epochs (FFCV compiles with numba here) then --epochs timed epochs; the
reported img/s is the best timed epoch (the machine is shared: best-of is the least noisy estimate).
`--dali-layouts` also times DALI's file reader against its webdataset (indexed tar) reader, decode only.

    python benchmarks/pipeline_throughput.py                     # CPU, 2 workers/threads
    python benchmarks/pipeline_throughput.py --device cuda       # GPU decode (DALI mixed, FFCV ToDevice)
Writes benchmarks/results/pipeline_throughput-<device>.{json,png,md} and prints the table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout, nothing installed
from fasttrain.augment import AugmentConfig, AugmentSampler, augment_batch, backend_for, norm_constants  # noqa: E402
from fasttrain.data.formats import (  # noqa: E402
    MissingBackend,
    read_file_list,
    write_dali_dataset,
    write_ffcv_dataset,
)
from fasttrain.data.tensor_format import Split, load_split, read_meta, write_tensor_dataset  # noqa: E402
from fasttrain.data.verify import is_complete  # noqa: E402
from fasttrain.outputs import claim_or_exit, write_figure, write_json, write_markdown  # noqa: E402
from fasttrain.pipelines import make_pipeline  # noqa: E402

PAD, CUTOUT = 4, 8
OURS = ("tensor", "ffcv", "dali", "torchvision")
PEER_OF = {"ffcv": "ffcv-raw", "dali": "dali-raw", "torchvision": "torchvision-raw"}


# ----------------------------------------------------------------------------- data
# the dataset format each loop reads: only the formats of the loops asked for are written, so a machine
# without ffcv can time the others
FORMAT_OF = {"tensor": "tensor", "ffcv": "ffcv", "dali": "dali", "torchvision": "dali", "ffcv-raw": "ffcv",
             "dali-raw": "dali", "torchvision-raw": "dali", "torchvision-mem": "tensor"}


def default_data() -> Path:
    """data/cifar10 (what `make run` converts), else .data/cifar10 (what benchmarks/gpu_check.py converts
    from the carried JPEG copy on a GPU machine)."""
    for path in (ROOT / "data" / "cifar10", ROOT / ".data" / "cifar10"):
        if (path / "meta.json").is_file():
            return path
    return ROOT / "data" / "cifar10"


def prepare(source: Path, n: int, cache: Path, formats: set[str]) -> dict[str, Path]:
    """Datasets of the same n images in each of `formats` (built once, reused); tensor always."""
    meta = read_meta(source)
    split = load_split(source, "train")
    idx = np.sort(np.random.default_rng(0).choice(len(split.labels), size=min(n, len(split.labels)), replace=False))
    sub = {"train": Split(np.array(split.images[idx]), np.array(split.labels[idx]))}
    root = cache / f"pipeline-{len(idx)}"
    dirs = {"tensor": root / "tensor", "ffcv": root / "ffcv", "dali": root / "dali"}
    common = {"name": "cifar10-bench", "source": f"subset of {source} (seed 0)"}
    if not is_complete(dirs["tensor"], "tensor"):
        write_tensor_dataset(dirs["tensor"], sub, meta["classes"], **common)
    if "ffcv" in formats and not is_complete(dirs["ffcv"], "ffcv"):
        write_ffcv_dataset(dirs["ffcv"], sub, meta["classes"], **common)
    if "dali" in formats and not is_complete(dirs["dali"], "dali"):
        write_dali_dataset(dirs["dali"], sub, meta["classes"], **common)  # JPEG q95
    return dirs


# ----------------------------------------------------------------------------- loops (one epoch each)
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_loop(name: str, data_dir: Path, args, device: torch.device, mean, std):
    pipe = make_pipeline(name, data_dir, "train", args.batch_size, device=device, seed=0, num_workers=args.workers)
    sampler = AugmentSampler(AugmentConfig(crop_pad=PAD, pad_mode="zero", flip=True, cutout=CUTOUT), seed=1,
                             device=device)
    scale, bias = norm_constants(mean, std, device)
    out_dtype = torch.float16 if device.type == "cuda" else torch.float32
    state = {"epoch": 0}

    def epoch() -> int:
        pipe.set_epoch(state["epoch"])
        state["epoch"] += 1
        count = 0
        for x, y in pipe:
            h, w = x.shape[1:3]
            inputs, _ = augment_batch(x, y, sampler.sample(len(x), h, w), scale, bias, out_dtype)
            count += len(inputs)
        sync(device)
        return count

    return epoch


def ffcv_raw_loop(data_dir: Path, args, device: torch.device, mean, std):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (
        Convert,
        Cutout,
        NormalizeImage,
        RandomHorizontalFlip,
        RandomTranslate,
        Squeeze,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    mean255, std255 = np.array(mean) * 255, np.array(std) * 255
    image = [SimpleRGBImageDecoder(), RandomTranslate(padding=PAD, fill=(0, 0, 0)), RandomHorizontalFlip(),
             Cutout(CUTOUT, fill=tuple(round(m) for m in mean255))]
    if device.type == "cuda":  # FFCV's CIFAR example: normalise on the GPU in fp16
        import torchvision.transforms as T

        image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(), Convert(torch.float16),
                  T.Normalize(mean255.tolist(), std255.tolist())]
    else:
        image += [NormalizeImage(mean255, std255, np.float32), ToTensor(), ToTorchImage()]
    label = [IntDecoder(), ToTensor(), Squeeze()] + ([ToDevice(device)] if device.type == "cuda" else [])
    info = read_meta(data_dir)["splits"]["train"]
    loader = Loader(str(data_dir / info["file"]), batch_size=args.batch_size, num_workers=args.workers,
                    order=OrderOption.RANDOM, seed=0, drop_last=False, os_cache=True,
                    pipelines={"image": image, "label": label})

    def epoch() -> int:
        count = 0
        for x, _ in loader:
            count += len(x)
        sync(device)
        return count

    return epoch


def dali_raw_loop(data_dir: Path, args, device: torch.device, mean, std):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    files, labels = read_file_list(data_dir, "train")
    gpu = device.type == "cuda"
    mean255, std255 = [m * 255 for m in mean], [s * 255 for s in std]
    h, w = read_meta(data_dir)["shape"][:2]

    @pipeline_def(batch_size=args.batch_size, num_threads=args.workers, seed=0,
                  device_id=(device.index or 0) if gpu else None)
    def pipe():
        jpegs, labs = fn.readers.file(files=files, labels=labels.astype(np.int32).tolist(), shuffle_after_epoch=True,
                                      pad_last_batch=True, name="Reader")
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        shift = fn.cast(fn.random.uniform(values=list(range(-PAD, PAD + 1)), shape=[2]), dtype=types.INT32)
        images = fn.slice(images, start=shift, shape=[h, w], axis_names="HW", out_of_bounds_policy="pad",
                          fill_values=0)
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(), mean=mean255, std=std255,
                                          dtype=types.FLOAT16 if gpu else types.FLOAT, output_layout="CHW")
        anchor = fn.random.uniform(range=[-CUTOUT / 2, max(h, w) - CUTOUT / 2], shape=[2])
        images = fn.erase(images, anchor=anchor, shape=[CUTOUT, CUTOUT], axis_names="HW", fill_value=0)
        return images, labs

    p = pipe()
    p.build()
    it = DALIGenericIterator(p, ["images", "labels"], reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL,
                             auto_reset=True)

    def epoch() -> int:
        count = 0
        for batch in it:
            count += len(batch[0]["images"])
        sync(device)
        return count

    return epoch


def torchvision_raw_loop(data_dir: Path, args, device: torch.device, mean, std, in_memory: bool):
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset
    from torchvision.datasets import ImageFolder

    h, w = read_meta(data_dir)["shape"][:2]
    erase = T.RandomErasing(p=1.0, scale=(CUTOUT * CUTOUT / (h * w),) * 2, ratio=(1.0, 1.0), value=0)
    crop_flip = [T.RandomCrop((h, w), padding=PAD, fill=0), T.RandomHorizontalFlip()]
    if in_memory:
        transform = T.Compose([*crop_flip, T.ConvertImageDtype(torch.float32), T.Normalize(mean, std), erase])
        arrays = load_split(data_dir, "train")

        class Mem(Dataset):
            def __len__(self):
                return len(arrays.labels)

            def __getitem__(self, i):
                chw = torch.from_numpy(np.array(arrays.images[i])).permute(2, 0, 1)
                return transform(chw), int(arrays.labels[i])

        dataset = Mem()
    else:
        transform = T.Compose([*crop_flip, T.ToTensor(), T.Normalize(mean, std), erase])
        dataset = ImageFolder(str(data_dir / "train"), transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda", persistent_workers=True, drop_last=False)

    def epoch() -> int:
        count = 0
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            count += len(x)
        sync(device)
        return count

    return epoch


def time_loop(epoch_fn, warmup: int, epochs: int) -> dict:
    for _ in range(warmup):
        epoch_fn()
    times, count = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        count = epoch_fn()
        times.append(time.perf_counter() - t0)
    return {"img_s": round(count / min(times), 1), "images_per_epoch": count,
            "epoch_s": [round(t, 4) for t in times]}


# ----------------------------------------------------------------------------- DALI layouts
def write_webdataset(data_dir: Path, out: Path) -> Path:
    """The dali dataset's JPEGs as one webdataset tar (key.jpg + key.cls as int64), DALI's indexed container."""
    tar_path = out / "train.tar"
    if tar_path.is_file():
        return tar_path
    files, labels = read_file_list(data_dir, "train")
    tmp = out / "train.tar.tmp"
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, "w") as tar:
        for i, (f, lab) in enumerate(zip(files, labels)):
            for suffix, data in ((".jpg", Path(f).read_bytes()), (".cls", np.int64(lab).tobytes())):
                info = tarfile.TarInfo(f"{i:07d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, tar_path)
    return tar_path


def dali_layout_loops(data_dir: Path, cache: Path, args, device: torch.device):
    """Decode-only epochs over the same JPEGs: file list vs webdataset tar."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    tar_path = write_webdataset(data_dir, cache / "webdataset")
    files, labels = read_file_list(data_dir, "train")
    gpu = device.type == "cuda"
    loops = {}
    for layout in ("files+list", "webdataset"):
        @pipeline_def(batch_size=args.batch_size, num_threads=args.workers, seed=0,
                      device_id=(device.index or 0) if gpu else None)
        def pipe(layout=layout):
            if layout == "files+list":
                jpegs, labs = fn.readers.file(files=files, labels=labels.astype(np.int32).tolist(),
                                              shuffle_after_epoch=True, pad_last_batch=True, name="Reader")
            else:
                jpegs, labs = fn.readers.webdataset(paths=[str(tar_path)], ext=["jpg", "cls"],
                                                    dtypes=[types.UINT8, types.INT64], random_shuffle=True,
                                                    initial_fill=4096, pad_last_batch=True, name="Reader")
            return fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB), labs

        p = pipe()
        p.build()
        it = DALIGenericIterator(p, ["images", "labels"], reader_name="Reader",
                                 last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

        def epoch(it=it) -> int:
            count = sum(len(b[0]["images"]) for b in it)
            sync(device)
            return count

        loops[layout] = epoch
    return loops


# ----------------------------------------------------------------------------- report
def plot(results: dict, target, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    vals = [results[k]["img_s"] for k in names]
    colors = ["tab:blue" if not k.endswith(("-raw", "-mem")) else "tab:gray" for k in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.barh(names[::-1], vals[::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("images / s (log scale; blue = ours incl. fused augmentation, gray = peer's own loop)")
    ax.set_title(title, fontsize=10)
    for b, v in zip(bars, vals[::-1]):
        ax.text(v, b.get_y() + b.get_height() / 2, f" {v:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    try:
        write_figure(target, fig)
    finally:
        plt.close(fig)


def markdown(report: dict) -> str:
    lines = [(f"Pipelines on {report['n_images']:,} CIFAR-10 images, batch {report['batch_size']}, "
              f"{report['device']}, {report['workers']} workers/threads; translate 4 + flip + cutout 8 + normalise. "
              f"{report['note']}"), "",
             "| loop | img/s | vs torchvision-raw |", "|---|---:|---:|"]
    base = report["loops"].get("torchvision-raw", {}).get("img_s")
    for name, r in report["loops"].items():
        ratio = f"{r['img_s'] / base:.1f}x" if base else "-"
        lines.append(f"| {name} | {r['img_s']:,.0f} | {ratio} |")
    if report.get("dali_layouts"):
        lines += ["", "| DALI layout (decode only) | img/s |", "|---|---:|"]
        lines += [f"| {k} | {v['img_s']:,.0f} |" for k, v in report["dali_layouts"].items()]
    lines += ["", "| bar | value | pass |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['value']} | {'yes' if b['pass'] else 'NO'} |" for b in report["bars"]]
    return "\n".join(lines) + "\n"


def bars(loops: dict) -> list[dict]:
    out = []
    if "tensor" in loops and "torchvision-raw" in loops:
        r = loops["tensor"]["img_s"] / loops["torchvision-raw"]["img_s"]
        out.append({"bar": "tensor >= 10x torchvision-raw (ImageFolder + DataLoader)", "value": f"{r:.1f}x",
                    "pass": r >= 10})
    if "tensor" in loops and "torchvision-mem" in loops:
        r = loops["tensor"]["img_s"] / loops["torchvision-mem"]["img_s"]
        out.append({"bar": "tensor >= 10x torchvision-mem (in-memory Dataset + DataLoader)", "value": f"{r:.1f}x",
                    "pass": r >= 10})
    for ours, peer in PEER_OF.items():
        if ours in loops and peer in loops:
            r = loops[ours]["img_s"] / loops[peer]["img_s"]
            out.append({"bar": f"{ours} within 5% of {peer} (ratio >= 0.95)", "value": f"{r:.2f}",
                        "pass": r >= 0.95})
    peers = [k for k in loops if k.endswith(("-raw", "-mem"))]
    if "tensor" in loops and peers:
        best = max(peers, key=lambda k: loops[k]["img_s"])
        r = loops["tensor"]["img_s"] / loops[best]["img_s"]
        out.append({"bar": f"tensor beats every peer (fastest: {best})", "value": f"{r:.2f}x", "pass": r > 1})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data(),
                    help="converted tensor dataset (default: data/cifar10, else .data/cifar10)")
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "bench", help="where the format copies live")
    ap.add_argument("--n", type=int, default=50_000, help="images (a seeded subset of train)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers / FFCV and DALI threads")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs per loop")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loop (best one reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default=None, help="comma-separated loop names to run (default: all)")
    ap.add_argument("--dali-layouts", action="store_true", help="also time DALI file list vs webdataset")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--tag", default="", help="suffix for the output files (e.g. a partial re-run)")
    ap.add_argument("--force", action="store_true", help="replace result files in --out fasttrain did not write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stem = args.out / f"pipeline_throughput-{device.type}{'-' + args.tag if args.tag else ''}"
    json_target, md_target, png_target = claim_or_exit(  # before any work (fasttrain.outputs)
        *(stem.with_name(stem.name + suffix) for suffix in (".json", ".md", ".png")), option="--out", force=args.force)
    if not (args.data / "meta.json").is_file():
        sys.exit(f"{args.data}: no converted dataset; run `fasttrain convert cifar10 --source ...` first")

    wanted = args.only.split(",") if args.only else list(FORMAT_OF)
    unknown = sorted(set(wanted) - set(FORMAT_OF))
    if unknown:
        sys.exit(f"--only: unknown loop(s) {', '.join(unknown)}; choose from {', '.join(FORMAT_OF)}")
    formats = {FORMAT_OF[w] for w in wanted} | ({"dali"} if args.dali_layouts else set())
    try:
        dirs = prepare(args.data, args.n, args.cache, formats)
    except MissingBackend as e:  # writing the .beton needs ffcv: time the loops that do not need it
        print(f"ffcv copy not written: {e}", flush=True)
        dirs = prepare(args.data, args.n, args.cache, formats - {"ffcv"})
    meta = read_meta(dirs["tensor"])
    mean, std = meta["mean"], meta["std"]
    builders = {
        "tensor": lambda: ours_loop("tensor", dirs["tensor"], args, device, mean, std),
        "ffcv": lambda: ours_loop("ffcv", dirs["ffcv"], args, device, mean, std),
        "dali": lambda: ours_loop("dali", dirs["dali"], args, device, mean, std),
        "torchvision": lambda: ours_loop("torchvision", dirs["dali"], args, device, mean, std),
        "ffcv-raw": lambda: ffcv_raw_loop(dirs["ffcv"], args, device, mean, std),
        "dali-raw": lambda: dali_raw_loop(dirs["dali"], args, device, mean, std),
        "torchvision-raw": lambda: torchvision_raw_loop(dirs["dali"], args, device, mean, std, in_memory=False),
        "torchvision-mem": lambda: torchvision_raw_loop(dirs["tensor"], args, device, mean, std, in_memory=True),
    }
    loops, skipped = {}, {}
    for name in wanted:
        try:
            epoch_fn = builders[name]()
        except (ImportError, MissingBackend) as e:  # e.g. no DALI/FFCV on this machine
            skipped[name] = str(e)
            print(f"{name:16s} skipped: {e}", flush=True)
            continue
        loops[name] = time_loop(epoch_fn, args.warmup, args.epochs)
        del epoch_fn
        print(f"{name:16s} {loops[name]['img_s']:>12,.0f} img/s   epochs {loops[name]['epoch_s']}", flush=True)
    layouts = {}
    if args.dali_layouts:
        for name, fn_ in dali_layout_loops(dirs["dali"], args.cache / f"pipeline-{meta['splits']['train']['count']}",
                                           args, device).items():
            layouts[name] = time_loop(fn_, args.warmup, args.epochs)
            print(f"dali layout {name:12s} {layouts[name]['img_s']:>10,.0f} img/s", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "question": "images/s from converted dataset to augmented, normalised batch, per pipeline",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "n_images": meta["splits"]["train"]["count"], "batch_size": args.batch_size, "workers": args.workers,
        "torch_threads": args.threads, "augment_backend": backend_for(device), "torch": torch.__version__,
        "python": platform.python_version(), "load_avg_1min_at_end": load,
        "note": ("Best of the timed epochs. Measured on a machine shared with other jobs (load average "
                 f"{load:.1f} at the end): absolute numbers are noisy, ratios less so." if load is not None else ""),
        "loops": loops, "skipped": skipped, "dali_layouts": layouts, "bars": bars(loops),
    }
    write_json(json_target, report)
    write_markdown(md_target, markdown(report))
    if loops:
        plot(loops, png_target, f"Pipelines, {report['n_images']:,} CIFAR-10 images, {report['device']}")
    print()
    print(markdown(report))
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
