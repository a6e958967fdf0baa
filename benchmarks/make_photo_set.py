"""Build the photo set the JPEG-pipeline benchmark reads: a jpeg store (fasttrain/data/jpeg_store.py) of real
colour photographs at mixed sizes, the kind of data the streaming pipeline is for.

The photos are the colour photographs scikit-image ships (astronaut, coffee, chelsea, rocket, Hubble deep
field, immunohistochemistry, retina, motorcycle): each image is a random crop of one of them (aspect ratio
between 1:2 and 2:1) resized so its longer side is uniform in [--min-side, --max-side] (160-900 px by
default), encoded once as a JPEG at --quality (4:2:0, as cameras and ImageNet's files are). Or --folder DIR:
an image folder of your own (class sub-folders), converted as it is.

The store keeps every JPEG byte for byte (max_side is set above --max-side), so every loader the benchmark
compares decodes the same bytes.

    python benchmarks/make_photo_set.py --out data/bench/photos --n 2000
    python benchmarks/make_photo_set.py --out data/bench/my_photos --folder ~/pictures/labelled
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout, nothing installed
from fasttrain.data.jpeg_store import write_jpeg_store  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle")


def load_photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        out.append(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disparity)
    return out


def photo_jpeg(photo: np.ndarray, rng: np.random.Generator, min_side: int, max_side: int, quality: int) -> bytes:
    """A random crop of `photo` (aspect 1:2 .. 2:1), its longer side resized to U[min_side, max_side]."""
    from PIL import Image

    h, w = photo.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
    ch = int(min(h, w / aspect) * rng.uniform(0.6, 1.0))
    cw = max(8, min(w, int(round(ch * aspect))))
    ch = max(8, ch)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    side = int(rng.integers(min_side, max_side + 1))
    scale = side / max(ch, cw)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    img = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(size, Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def synthetic_items(n: int, classes: int, seed: int, min_side: int, max_side: int, quality: int):
    photos = load_photos()
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield photo_jpeg(photos[i % len(photos)], rng, min_side, max_side, quality), i % classes


def folder_items(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise SystemExit(f"error: --folder {folder}: expected class sub-folders (at least 2), found {len(classes)}")
    items = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).rglob("*"))
             if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp")]
    return items, classes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the store to write (must not exist)")
    ap.add_argument("--n", type=int, default=2000, help="train images (synthetic set); test: n / 10")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--min-side", type=int, default=160)
    ap.add_argument("--max-side", type=int, default=900)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", type=Path, help="convert this image folder (class sub-folders) instead")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: --out {args.out} exists; choose a new path (nothing was written)")
    t0 = time.perf_counter()
    if args.folder:
        items, classes = folder_items(args.folder)
        test = items[::10]
        train = [it for i, it in enumerate(items) if i % 10]
        cap = 16384
    else:
        classes = [f"class{c}" for c in range(args.classes)]
        train = list(synthetic_items(args.n, args.classes, args.seed, args.min_side, args.max_side, args.quality))
        test = list(synthetic_items(max(args.n // 10, args.classes), args.classes, args.seed + 1, args.min_side,
                                    args.max_side, args.quality))
        cap = max(args.max_side, 16)
    write_jpeg_store(args.out, {"train": train, "test": test}, classes, max_side=cap, workers=args.workers,
                     source=str(args.folder or "skimage photos"), log=lambda s: None)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{args.out}: {len(train)} train + {len(test)} test images, {size / 1e6:.0f} MB, "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
