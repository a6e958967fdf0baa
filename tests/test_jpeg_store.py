"""The jpeg store and its converters, through the real CLI: a miniature ILSVRC-2012 layout (both val layouts)
built from scikit-image's photos cut at random sizes converts, verifies and reads back; JPEGs within the cap
come back byte for byte, larger ones with the longer side at the cap; bad files are named or skipped; a
convert killed mid-way publishes nothing and the same command then finishes it, with the same bytes as an
uninterrupted convert."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.data.convert import convert
from fasttrain.data.errors import DatasetError
from fasttrain.data.jpeg_store import INDEX_DTYPE, JpegStore, capped_size, check_shards, load_index
from fasttrain.data.verify import check_dataset

skimage_data = pytest.importorskip("skimage.data")

REPO = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850"]
NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]
CAP = 160


def _photos() -> list[np.ndarray]:
    return [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]


def _image_file(rng: np.random.Generator, photo: np.ndarray, kind: str, lo: int = 40, hi: int = 300) -> bytes:
    """A crop of `photo` at a random size in [lo, hi) per side, encoded as `kind`."""
    h, w = (int(rng.integers(lo, min(hi, photo.shape[0]))), int(rng.integers(lo, min(hi, photo.shape[1]))))
    top, left = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
    img = Image.fromarray(photo[top : top + h, left : left + w])
    buf = io.BytesIO()
    if kind == "png":
        img.save(buf, "PNG")
    elif kind == "grey":
        img.convert("L").save(buf, "JPEG", quality=85)
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=85)
    else:
        img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def build_ilsvrc(root: Path, *, flat_val: bool, seed: int = 0, per_class: int = 4, data_dir: str = "") -> dict[str, bytes]:
    """A miniature ILSVRC-2012 layout (images under `data_dir`, e.g. Kaggle's ILSVRC/Data/CLS-LOC/; the LOC
    files at the top); returns {path under data_dir: bytes} of every image. Some images are PNGs and grey or
    CMYK JPEGs named .JPEG (as a few of ImageNet's are); sizes straddle the cap."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    kinds = ["jpeg", "jpeg", "png", "jpeg", "grey", "jpeg", "cmyk"]
    files: dict[str, bytes] = {}
    n = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            files[f"train/{wnid}/{wnid}_{i}.JPEG"] = _image_file(rng, photos[(c + i) % 4], kinds[n % len(kinds)])
            n += 1
    solution = ["ImageId,PredictionString"]
    for c, wnid in enumerate(WNIDS):
        for i in range(2):
            image_id = f"ILSVRC2012_val_{c * 2 + i + 1:08d}"
            rel = f"val/{image_id}.JPEG" if flat_val else f"val/{wnid}/{image_id}.JPEG"
            files[rel] = _image_file(rng, photos[(c + i + 1) % 4], kinds[n % len(kinds)])
            solution.append(f"{image_id},{wnid} 1 2 30 40 {wnid} 5 6 20 20")
            n += 1
    for rel, data in files.items():
        (root / data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / data_dir / rel).write_bytes(data)
    if flat_val:
        (root / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {t}\n" for w, t in zip(WNIDS, NAMES)))
    return files


def cli(*args: str, check: bool = True):
    """The `fasttrain` command in this process (a new interpreter costs seconds of torch import; the kill
    test starts a real one). `.output` holds stdout and stderr, `.exit_code` the exit status."""
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if check:
        assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def expected_order(files: dict[str, bytes], split: str) -> list[tuple[str, int]]:
    """(file, label) in the store's order: by class (sorted wnids), then file name."""
    folder = "train" if split == "train" else "val"
    solution = {}
    out = []
    for rel in files:
        if not rel.startswith(folder + "/"):
            continue
        parts = rel.split("/")
        wnid = parts[1] if len(parts) == 3 else solution.setdefault(rel, None)
        if wnid is None:  # flat val: the miniature labels val image k of class c as WNIDS[c]
            number = int(Path(rel).stem.rsplit("_", 1)[1]) - 1
            wnid = WNIDS[number // 2]
        out.append((rel, WNIDS.index(wnid)))
    return sorted(out, key=lambda t: (t[1], t[0]))


def check_store(out: Path, files: dict[str, bytes]) -> None:
    """Every sample: label right; an RGB JPEG within the cap byte for byte; others RGB JPEGs at the capped size."""
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "jpeg" and meta["classes"] == WNIDS and meta["class_names"] == NAMES
    copied = 0
    for split in ("train", "test"):
        store = JpegStore(out, split)
        order = expected_order(files, split)
        assert store.index.dtype == INDEX_DTYPE and len(store) == len(order)
        assert store.labels.tolist() == [lab for _, lab in order]
        got = store.read(np.arange(len(store))[::-1])[::-1]  # any order
        for k, ((rel, _), data) in enumerate(zip(order, got)):
            with Image.open(io.BytesIO(files[rel])) as src:
                src_size, src_format, src_mode = src.size, src.format, src.mode
            w, h = src_size
            want_h, want_w = capped_size(h, w, CAP)
            with Image.open(io.BytesIO(data)) as stored:
                assert stored.format == "JPEG" and stored.mode == "RGB", rel
                assert stored.size == (want_w, want_h), (rel, stored.size, (want_w, want_h))
            assert (store.heights[k], store.widths[k]) == (want_h, want_w)
            if src_format == "JPEG" and src_mode == "RGB" and max(w, h) <= CAP:
                assert data == files[rel], f"{rel}: a JPEG within the cap must be stored byte for byte"
                copied += 1
            else:
                assert data != files[rel]
            if max(w, h) > CAP:
                assert max(want_h, want_w) == CAP
        # WebDataset layout: members <key>.jpg / <key>.cls, the .jpg bytes those of the index
        with tarfile.open(out / meta["splits"][split]["shards"][0]) as tar:
            names = tar.getnames()
            assert names[:2] == ["000000000.jpg", "000000000.cls"]
            assert tar.extractfile("000000000.jpg").read() == got[0]
            assert int(tar.extractfile("000000000.cls").read()) == store.labels[0]
        assert pickle.loads(pickle.dumps(store)).read([len(store) - 1, 0]) == [got[-1], got[0]]
    assert copied == meta["stored"]["copied"] and copied > 0


@pytest.mark.parametrize("flat_val", [False, True], ids=["val_folders", "kaggle_val_flat_csv"])
def test_imagenet_layout_converts_verifies_and_reads_back(tmp_path, flat_val):
    source = tmp_path / "ILSVRC"
    data_dir = "ILSVRC/Data/CLS-LOC/" if flat_val else ""  # Kaggle's layout, or the plain one
    files = build_ilsvrc(source, flat_val=flat_val, data_dir=data_dir)
    (source / data_dir / "test").mkdir()
    (source / data_dir / "test" / "ILSVRC2012_test_00000001.JPEG").write_bytes(next(iter(files.values())))
    out = tmp_path / "imagenet"
    proc = cli("convert", "imagenet", "--source", str(source), "--out", str(out), "--max-side", str(CAP))
    assert "official test split (1 images) has no labels" in proc.output
    assert f"wrote {out} (jpeg; train 12, test 6; 3 classes" in proc.output
    check_store(out, files)
    assert "OK" in cli("verify", str(out)).output
    assert not (tmp_path / ".imagenet.partial").exists()
    # the same command again reuses the complete store
    assert "reusing it" in cli("convert", "imagenet", "--source", str(source), "--out", str(out), "--max-side",
                               str(CAP)).output


def test_verify_names_a_damaged_shard_and_a_bad_index(tmp_path):
    source = tmp_path / "src"
    build_ilsvrc(source, flat_val=False, per_class=2)
    out = tmp_path / "store"
    cli("convert", "imagenet", "--source", str(source), "--out", str(out), "--max-side", str(CAP))
    index = load_index(out, "train", 1)
    index[1]["offset"] = index[0]["offset"]  # a row pointing at another sample's member
    with pytest.raises(DatasetError, match="expected 000000001.jpg"):
        check_shards(out, "train", ["train-000000.tar"], index)
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = cli("verify", str(out), check=False)
    assert proc.exit_code == 2 and "train-000000.tar: sha256 differs" in proc.output
    shard.write_bytes(bytes(data[:-4096]))
    proc = cli("verify", str(out), "--quick", check=False)
    assert proc.exit_code == 2 and "train-000000.tar" in proc.output


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header announces width x height pixels (a decompression-bomb header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_files_are_named_or_skipped(tmp_path):
    """A corrupt file stops the convert with its name; with --skip-bad it, a symbolic link and a
    decompression-bomb header are skipped and listed in meta.json."""
    source = tmp_path / "src"
    build_ilsvrc(source, flat_val=False, per_class=2)
    folder = source / "train" / WNIDS[1]
    (folder / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "store"
    proc = cli("convert", "imagenet", "--source", str(source), "--out", str(out), check=False)
    assert proc.exit_code == 2 and "broken.JPEG" in proc.output and "--skip-bad" in proc.output
    assert "Traceback" not in proc.output and not out.exists()
    (folder / "link.JPEG").symlink_to(folder / f"{WNIDS[1]}_0.JPEG")
    (folder / "bomb.JPEG").write_bytes(_png_header_claiming(40_000, 40_000))
    cli("convert", "imagenet", "--source", str(source), "--out", str(out), "--skip-bad")
    meta = json.loads((out / "meta.json").read_text())
    skipped = {Path(f["file"]).name: f["error"] for f in meta["skipped"]["files"]}
    assert sorted(skipped) == ["bomb.JPEG", "broken.JPEG", "link.JPEG"] and meta["skipped"]["count"] == 3
    assert "decompression bomb" in skipped["bomb.JPEG"] and "symbolic link" in skipped["link.JPEG"]
    assert meta["splits"]["train"]["count"] == 6
    cli("verify", str(out))


def test_photo_folder_of_mixed_sizes(tmp_path):
    """`convert imagefolder` of photos of different sizes: the tensor format asks for --size or --format
    jpeg; --format jpeg keeps each photo (byte for byte within the cap)."""
    rng = np.random.default_rng(1)
    photos = _photos()
    files = {}
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(5):
            rel = f"{cls}/{i}.jpg"
            files[rel] = _image_file(rng, photos[c * 2 + i % 2], "jpeg", 60, 500)
            (tmp_path / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "photos" / rel).write_bytes(files[rel])
    proc = cli("convert", "imagefolder", "--source", str(tmp_path / "photos"), "--name", "pets", "--out",
               str(tmp_path / "t"), check=False)
    assert proc.exit_code == 2 and "--format jpeg" in proc.output
    out = tmp_path / "pets"
    cli("convert", "imagefolder", "--source", str(tmp_path / "photos"), "--name", "pets", "--out", str(out),
        "--format", "jpeg", "--max-side", "400")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["count"] + meta["splits"]["test"]["count"] == 10
    store = JpegStore(out, "train")
    for data in store.read(range(len(store))):
        assert data in files.values() or max(Image.open(io.BytesIO(data)).size) == 400
    cli("verify", str(out))


def test_tinyimagenet_and_cars196_originals(tmp_path):
    """--format jpeg of Tiny ImageNet keeps its JPEGs byte for byte (the grey one as RGB); Cars196 keeps each
    whole photo, with its box and original size, records in the stored order."""
    from test_datasets import make_cars_annos, make_tiny_imagenet

    root, expected = make_tiny_imagenet(tmp_path / "tiny", np.random.default_rng(0))
    out = convert("tinyimagenet", source=root, out=tmp_path / "tiny-jpeg", fmt="jpeg", log=lambda s: None)
    meta = check_dataset(out, full=True)
    assert meta["stored"] == {"copied": 14, "encoded": 1, "of": 15} and len(meta["test_boxes"]) == 6
    for split, (images, labels) in expected.items():
        store = JpegStore(out, split)
        assert store.labels.tolist() == labels.tolist()
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in store.read(range(len(store)))])
        assert np.abs(decoded.astype(int) - images).max() <= 8  # the grey JPEG re-encoded once, others identical
    originals = sorted((root / "train").rglob("*.JPEG"))
    assert sum(b in {p.read_bytes() for p in originals} for b in JpegStore(out, "train").read(range(9))) == 8

    pytest.importorskip("scipy")
    src, rows = make_cars_annos(tmp_path / "cars", np.random.default_rng(3))
    out = convert("cars196", source=src, out=tmp_path / "cars-jpeg", fmt="jpeg", log=lambda s: None)
    meta = check_dataset(out, full=True)
    by_name = {r["relative_im_path"]: r for r in rows}
    for split in ("train", "test"):
        store, records = JpegStore(out, split), meta["images"][split]
        for k, (f, box, wh) in enumerate(zip(records["files"], records["boxes"], records["original_size"])):
            r = by_name[f]
            assert box == [r["bbox_x1"], r["bbox_y1"], r["bbox_x2"], r["bbox_y2"]] and tuple(wh) == r["size"]
            assert (store.widths[k], store.heights[k]) == r["size"]  # small photos: whole, at their size
            assert store.labels[k] == r["class"] - 1


@pytest.mark.slow
def test_killed_convert_publishes_nothing_and_the_rerun_finishes_it(tmp_path):
    """kill -9 mid-way (after the first shard): no output; the same command continues from the finished
    shards and gives the same bytes as an uninterrupted convert."""
    source = tmp_path / "src"
    rng = np.random.default_rng(2)
    photos = _photos()
    for c, wnid in enumerate(WNIDS[:2]):
        for i in range(100):
            path = source / "train" / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_image_file(rng, photos[(c + i) % 4], "png" if i % 8 == 0 else "jpeg", 150, 320))
        for i in range(3):
            path = source / "val" / wnid / f"v{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_image_file(rng, photos[i], "jpeg"))
    out, fresh = tmp_path / "store", tmp_path / "fresh"
    options = ["--source", str(source), "--max-side", "256", "--shard-mib", "1"]
    args = ["convert", "imagenet", *options, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "fasttrain", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    journal = tmp_path / ".store.partial" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.is_file() and journal.read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the convert finished before it could be killed; make it longer"
    assert not out.exists(), "a killed convert must publish nothing"
    assert "resuming an interrupted convert: 1 shard(s)" in cli(*args).output
    assert not (tmp_path / ".store.partial").exists()
    cli("convert", "imagenet", *options, "--out", str(fresh))
    resumed_meta = json.loads((out / "meta.json").read_text())
    fresh_meta = json.loads((fresh / "meta.json").read_text())
    for split in ("train", "test"):
        assert resumed_meta["splits"][split]["files"] == fresh_meta["splits"][split]["files"]
    assert len(resumed_meta["splits"]["train"]["shards"]) >= 3
    cli("verify", str(out))
