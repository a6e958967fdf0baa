"""Random-resized-crop JPEG loaders on the CPU, ours and the peers' own, on the same stored bytes, in one run.

Question: how many 224 px training images per second (random-resized crop, flip, uint8 batches of 256) does
each loader deliver from the same JPEG files, each at its best setting, and how much memory does it hold?

    ours         pipelines/stream.py, decoder "cpu": libjpeg-turbo with DCT scaling and region decode, crop +
                 resize in C++, a thread pool (threads = 1, 2)
    ffcv         ffcv.loader.Loader over a .beton holding the SAME JPEG bytes (written byte for byte, not
                 re-encoded), RandomResizedCropRGBImageDecoder + RandomHorizontalFlip (workers = 1, 2;
                 os_cache on and off)
    dali         NVIDIA DALI on the CPU: readers.webdataset over the store's own tar shards,
                 decoders.image_random_crop(device="cpu") + resize (antialiased) + flip (threads = 1, 2)
    torchvision  ImageFolder over the same JPEG files extracted to a folder, RandomResizedCrop(224) +
                 RandomHorizontalFlip + PILToTensor, DataLoader (workers = 1, 2, 3)

Every setting runs in its own process: --warmup untimed epochs (FFCV's numba compilation, DALI's index,
worker start-up), then --epochs timed epochs, and the settings take turns for --rounds rounds, so that
on a shared machine each sees the others' load alike; img/s is the best timed epoch over the rounds (the
least noisy estimate). CPU ms / image (user + system time of the process and its workers per image, the
lowest) does not depend on the machine's load: on an idle machine with C cores a loader cannot exceed
C * 1000 / (CPU ms per image) images/s. Peak RSS is the largest sum of resident memory over the process
and its children (DataLoader workers), sampled every 20 ms (ours: after its C++ decoder is built, since a
first-use build runs the compiler as a child process). Ratios are against the strongest peer.

--big-gb G also builds a store of >= G GB (the photo set repeated) and measures one epoch of ours over
all of it, to show that resident memory does not grow with the dataset (reads are pread, not mmap).

    python benchmarks/make_photo_set.py --out data/bench/photos --n 2000
    python benchmarks/jpeg_pipeline.py --store data/bench/photos [--big-gb 4]
Writes benchmarks/results/jpeg_pipeline_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout, nothing installed
from fasttrain.data.jpeg_store import JpegStore, write_jpeg_store  # noqa: E402
from fasttrain.outputs import claim_or_exit, write_json, write_markdown  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {
    "ours": [{"threads": 1}, {"threads": 2}],
    "ffcv": [{"workers": w, "os_cache": c} for c in (True, False) for w in (1, 2)],
    "dali": [{"threads": 1}, {"threads": 2}],
    "torchvision": [{"workers": 1}, {"workers": 2}, {"workers": 3}],
}


# ============================================================================ the same bytes, three layouts
def write_ffcv_copy(store: JpegStore, path: Path) -> None:
    """A .beton whose image field holds the store's JPEG bytes unchanged (FFCV's jpg mode)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.writer import DatasetWriter

    class StoredJpegField(RGBImageField):
        """RGBImageField in jpg mode that writes the given JPEG as it is instead of encoding pixels."""

        def encode(self, destination, item, malloc):
            jpeg, h, w = item
            destination["mode"] = IMAGE_MODES["jpg"]
            destination["height"], destination["width"] = h, w
            destination["data_ptr"], storage = malloc(len(jpeg))
            storage[:] = np.frombuffer(jpeg, dtype=np.uint8)

    class Items:
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            (jpeg,) = store.read([i])
            return (jpeg, int(store.heights[i]), int(store.widths[i])), int(store.labels[i])

    tmp = path.with_suffix(".tmp")
    DatasetWriter(str(tmp), {"image": StoredJpegField(write_mode="jpg"), "label": IntField()},
                  num_workers=1).from_indexed_dataset(Items())
    os.replace(tmp, path)


def write_folder_copy(store: JpegStore, folder: Path) -> None:
    """ImageFolder layout (<class>/<index>.jpg) of the store's JPEG bytes."""
    tmp = folder.with_name(folder.name + ".tmp")
    for i in range(0, len(store), 512):
        ids = np.arange(i, min(i + 512, len(store)))
        for j, jpeg in zip(ids, store.read(ids)):
            d = tmp / f"class{store.labels[j]:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{j:08d}.jpg").write_bytes(jpeg)
    os.replace(tmp, folder)


def prepare(store_dir: Path, systems: list[str]) -> Path:
    work = store_dir.with_name(store_dir.name + ".bench")
    work.mkdir(exist_ok=True)
    store = JpegStore(store_dir, "train")
    if "ffcv" in systems and not (work / "train.beton").exists():
        print("writing the .beton (same JPEG bytes) ...", flush=True)
        write_ffcv_copy(store, work / "train.beton")
    if "torchvision" in systems and not (work / "folder").exists():
        print("extracting the JPEG files for ImageFolder ...", flush=True)
        write_folder_copy(store, work / "folder")
    return work


# ============================================================================ one measurement (own process)
class PeakRSS:
    """Largest resident memory of this process plus its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.peak, self.interval = psutil.Process(), 0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._sample())

    def cpu_seconds(self) -> float:
        """User + system CPU time of this process and its live children (DataLoader workers)."""
        total = 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return total


def epochs_of(system: str, setting: dict, store_dir: Path, work: Path, res: int, batch: int):
    """A function running one epoch and returning the number of images it delivered."""
    if system == "ours":
        from fasttrain.pipelines.stream import StreamPipeline

        pipe = StreamPipeline(store_dir, "train", batch, num_workers=setting["threads"], decoder="cpu", res=res)
        state = {"epoch": 0}

        def epoch() -> int:
            pipe.set_epoch(state["epoch"])
            state["epoch"] += 1
            return sum(len(x) for x, _ in pipe)
        return epoch
    if system == "ffcv":
        from ffcv.fields import RGBImageField
        from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, ToTensor

        loader = Loader(str(work / "train.beton"), batch_size=batch, num_workers=setting["workers"],
                        order=OrderOption.RANDOM, os_cache=setting["os_cache"], drop_last=False, seed=0,
                        custom_fields={"image": RGBImageField},  # the writer's subclass only changed encode
                        pipelines={"image": [RandomResizedCropRGBImageDecoder((res, res)), RandomHorizontalFlip(),
                                             ToTensor()],
                                   "label": [IntDecoder(), ToTensor()]})
        return lambda: sum(len(x) for x, _ in loader)
    if system == "dali":
        from nvidia.dali import fn, pipeline_def, types

        shards = [str(p) for p in JpegStore(store_dir, "train").shards]

        @pipeline_def(batch_size=batch, num_threads=setting["threads"], device_id=None, prefetch_queue_depth=2)
        def crops():
            jpegs, labels = fn.readers.webdataset(paths=shards, ext=["jpg", "cls"], random_shuffle=True,
                                                  initial_fill=1024, name="reader")
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                                   num_attempts=10)
            images = fn.resize(images, resize_x=res, resize_y=res, antialias=True)
            return fn.flip(images, horizontal=fn.random.coin_flip()), labels

        pipe = crops()
        pipe.build()
        steps = math.ceil(pipe.epoch_size("reader") / batch)

        def epoch() -> int:
            n = 0
            for _ in range(steps):
                images, _ = pipe.run()
                n += len(images)
            return n
        return epoch
    if system == "torchvision":
        import torch
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        tf = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                                 transforms.PILToTensor()])
        loader = torch.utils.data.DataLoader(ImageFolder(str(work / "folder"), transform=tf), batch_size=batch,
                                             shuffle=True, num_workers=setting["workers"], persistent_workers=True)
        return lambda: sum(len(x) for x, _ in loader)
    raise ValueError(system)


def measure(system: str, setting: dict, store_dir: Path, work: Path, res: int, batch: int, warmup: int,
            epochs: int) -> dict:
    if system == "ours":  # the decoder's one-off JIT build (a compiler child process) is not the loader's memory
        from fasttrain.cuda_ext import jpeg_cpu

        jpeg_cpu.load()
    rss = PeakRSS()
    epoch = epochs_of(system, setting, store_dir, work, res, batch)
    for _ in range(warmup):
        epoch()
    rates, cpu_ms = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), rss.cpu_seconds()
        n = epoch()
        rates.append(n / (time.perf_counter() - t0))
        cpu_ms.append(1000 * (rss.cpu_seconds() - c0) / n)
    return {"system": system, "setting": setting, "img_s": max(rates), "img_s_all": rates,
            "cpu_ms_per_img": min(cpu_ms), "peak_rss_mb": rss.stop() / 2**20}


def run_one(args, system: str, setting: dict, store_dir: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps({"system": system, "setting": setting}), "--store",
           str(store_dir), "--res", str(args.res), "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--epochs", str(args.epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"system": system, "setting": setting, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================ memory on a big store
def big_store(photos: Path, gb: float) -> Path:
    """A store of >= gb GB: the photo set's JPEGs repeated (written once, then reused)."""
    path = photos.with_name(f"{photos.name}-{gb:g}gb")
    if path.exists():
        return path
    store = JpegStore(photos, "train")
    jpegs = store.read(np.arange(len(store)))
    labels = store.labels.tolist()
    copies = math.ceil(gb * 1e9 / sum(len(j) for j in jpegs))
    items = [(jpegs[i], labels[i]) for _ in range(copies) for i in range(len(jpegs))]
    print(f"writing {path} ({len(items)} images, {copies} copies of the photo set) ...", flush=True)
    classes = store.meta["classes"]
    write_jpeg_store(path, {"train": items, "test": items[: len(jpegs) // 10]}, classes,
                     max_side=int(store.meta.get("max_side", 1024)), log=lambda s: None)
    return path


# ============================================================================ report
def machine() -> dict:
    model, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = next((i for i in ("avx512f", "avx2", "avx", "sse4_2") if i in flags), "unknown")
    return {"cpu": model, "isa": isa, "amx": "amx_tile" in flags, "cores": os.cpu_count(),
            "load_average_before": os.getloadavg()}


def table(rows: list[dict], best: dict, ref: str) -> str:
    lines = ["| loader | setting | img/s | vs " + ref + " | CPU ms / image | peak RSS (MB) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['setting']} | failed: {r['error']} | | | |")
            continue
        mark = " **(best)**" if best[r["system"]] is r else ""
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items())
        lines.append(f"| {r['system']}{mark} | {setting} | {r['img_s']:.0f} | "
                     f"{r['img_s'] / best[ref]['img_s']:.2f}x | {r['cpu_ms_per_img']:.2f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "data" / "bench" / "photos")
    ap.add_argument("--systems", default="ours,ffcv,dali,torchvision")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per setting and round")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin passes over every setting")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--big-gb", type=float, default=0, help="also measure ours over a store of this many GB")
    ap.add_argument("--big-repeats", type=int, default=3, help="epochs over the big store (each in its own process)")
    ap.add_argument("--out", default="jpeg_pipeline_cpu")
    ap.add_argument("--force", action="store_true", help="replace result files fasttrain did not write")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = ap.parse_args(argv)
    if args.one:
        spec = json.loads(args.one)
        work = args.store.with_name(args.store.name + ".bench")
        print(json.dumps(measure(spec["system"], spec["setting"], args.store, work, args.res, args.batch,
                                 args.warmup, args.epochs)))
        return
    json_target, md_target = claim_or_exit(RESULTS / f"{args.out}.json", RESULTS / f"{args.out}.md", option="--out",
                                           force=args.force)  # before any work (fasttrain.outputs)
    if not (args.store / "meta.json").exists():
        raise SystemExit(f"error: --store {args.store}: no jpeg store there; build one with "
                         f"`python benchmarks/make_photo_set.py --out {args.store}`")
    systems = args.systems.split(",")
    info = machine()
    store = JpegStore(args.store, "train")
    info["store"] = {"path": str(args.store), "images": len(store), "mb": round(sum(
        p.stat().st_size for p in store.shards) / 1e6), "sides": [int(min(store.heights.min(), store.widths.min())),
                                                                  int(max(store.heights.max(), store.widths.max()))]}
    work = prepare(args.store, systems)
    if "ours" in systems:  # build the C++ decoder once, before any measurement
        from fasttrain.cuda_ext import jpeg_cpu

        jpeg_cpu.load()
    rows: dict[str, dict] = {}  # best of the rounds per setting
    for _ in range(args.rounds):  # round-robin: every setting sees the machine's load as often as the others
        for system in systems:
            for setting in SETTINGS[system]:
                r = run_one(args, system, setting, args.store, work)
                print(json.dumps(r), flush=True)
                key = json.dumps([system, setting])
                old = rows.get(key)
                if old is None or "error" in old or ("error" not in r and r["img_s"] > old["img_s"]):
                    if old is not None and "error" not in old and "error" not in r:
                        r["cpu_ms_per_img"] = min(r["cpu_ms_per_img"], old["cpu_ms_per_img"])
                        r["peak_rss_mb"] = max(r["peak_rss_mb"], old["peak_rss_mb"])
                    rows[key] = r
                elif "error" not in r and "error" not in old:
                    old["cpu_ms_per_img"] = min(r["cpu_ms_per_img"], old["cpu_ms_per_img"])
                    old["peak_rss_mb"] = max(r["peak_rss_mb"], old["peak_rss_mb"])
    rows = list(rows.values())
    info["load_average_after"] = os.getloadavg()
    ok = [r for r in rows if "error" not in r]
    best = {s: max((r for r in ok if r["system"] == s), key=lambda r: r["img_s"]) for s in {r["system"] for r in ok}}
    peers = [s for s in best if s != "ours"]
    ref = max(peers, key=lambda s: best[s]["img_s"]) if peers else "ours"
    ratios = {s: best["ours"]["img_s"] / best[s]["img_s"] for s in peers} if "ours" in best else {}
    cpu = {s: min(r["cpu_ms_per_img"] for r in ok if r["system"] == s) for s in best}  # each loader's most frugal
    cpu_ratios = {s: cpu[s] / cpu["ours"] for s in peers} if "ours" in best else {}
    big = None
    if args.big_gb:
        path = big_store(args.store, args.big_gb)
        size = sum(p.stat().st_size for p in JpegStore(path, "train").shards)
        spec = {"threads": best.get("ours", {"setting": {"threads": 2}})["setting"]["threads"]}
        runs = [run_one(argparse.Namespace(**{**vars(args), "warmup": 0, "epochs": 1}), "ours", spec, path, work)
                for _ in range(args.big_repeats)]
        ok_runs = [r for r in runs if "error" not in r]
        big = {"store_gb": round(size / 1e9, 2), "images": len(JpegStore(path, "train")), "runs": runs,
               "peak_rss_mb": max((r["peak_rss_mb"] for r in ok_runs), default=float("nan")),
               "img_s": max((r["img_s"] for r in ok_runs), default=float("nan"))}
        print(json.dumps(big), flush=True)
    result = {"machine": info, "res": args.res, "batch": args.batch, "rows": rows, "best": {
        s: {"setting": b["setting"], "img_s": round(b["img_s"], 1), "peak_rss_mb": round(b["peak_rss_mb"]),
            "cpu_ms_per_img": round(cpu[s], 3)} for s, b in best.items()},
        "ours_vs": {s: round(v, 2) for s, v in ratios.items()},
        "ours_cpu_efficiency_vs": {s: round(v, 2) for s, v in cpu_ratios.items()}, "big_store": big}
    write_json(json_target, result)
    md = [f"# JPEG loaders, random-resized crop at {args.res} px, batch {args.batch} (CPU)", "",
          f"Machine: {info['cpu']} ({info['isa']}{', AMX' if info['amx'] else ''}), {info['cores']} cores; load "
          f"average {', '.join(f'{x:.2f}' for x in info['load_average_before'])} before, "
          f"{', '.join(f'{x:.2f}' for x in info['load_average_after'])} after.",
          f"Data: {info['store']['images']} photos, {info['store']['mb']} MB of JPEG, sides "
          f"{info['store']['sides'][0]}-{info['store']['sides'][1]} px; every loader reads the same bytes.", "",
          table(rows, best, ref), "",
          "Ours against each peer at its best setting: " + ", ".join(f"{v:.2f}x {s}" for s, v in ratios.items())
          + " in images/s; " + ", ".join(f"{v:.2f}x {s}" for s, v in cpu_ratios.items())
          + " fewer CPU seconds per image (each at its most frugal setting)."]
    if big:
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in big["runs"] if "error" not in r)
        md += ["", f"Memory on a {big['store_gb']} GB store ({big['images']} images; {len(big['runs'])} epochs of ours, "
                   f"each in its own process): peak RSS {peaks} MB (highest {big['peak_rss_mb']:.0f} MB), "
                   f"up to {big['img_s']:.0f} img/s. On the {info['store']['mb']} MB set: "
                   f"{best['ours']['peak_rss_mb']:.0f} MB." if "ours" in best else ""]
    write_markdown(md_target, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
