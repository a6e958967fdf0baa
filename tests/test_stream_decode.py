"""The CPU JPEG decoder of the streaming pipeline (C++: libjpeg-turbo DCT scaling + region decode +
crop_resize.h) against the reference (full decode + torchvision resized_crop), on scikit-image's photos.

Tolerances, and why:
- region decode: bit for bit the same pixels as a full decode at the same DCT scale (identity resize).
- full scale (dct_scaling=False): +-1 level. Same decoded pixels (both libjpeg, ISLOW IDCT); the resize is
  crop_resize.h's float arithmetic against torch's, which may round a value near .5 the other way.
- with DCT scaling: the C++ path starts from the DCT's own downscale (each 8x8 block's n x n inverse DCT, a
  sharper, box-like filter) instead of the triangle filter of a full-size resize, so pixels differ
  near edges. Measured on these photos at 224 px: mean |diff| 0.5-1.0 level, PSNR > 41 dB; asserted:
  mean < 2 levels and PSNR > 30 dB per image (visually identical; a wrong box or flip gives ~20 dB).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fasttrain.cuda_ext import jpeg_cpu
from fasttrain.data.crops import centre_crop_box, flip_flags, rrc_params
from fasttrain.pipelines.stream_cpu import CpuCropDecoder, JpegDecodeError, ReferenceCropDecoder

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("cpu_jpeg_decoder")  # built by the first test here, not at collection


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _jpeg(img: np.ndarray, *, quality: int = 90, subsampling: int = 2, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def _photo_set(n: int, seed: int = 0) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """n JPEGs: the photos resized to a random longer side in [160, 900], 4:2:0, 4:2:2 or 4:4:4 chroma."""
    rng = np.random.default_rng(seed)
    jpegs, hs, ws = [], [], []
    for i in range(n):
        photo = getattr(skimage_data, PHOTOS[i % len(PHOTOS)])()
        side = int(rng.integers(160, 901))
        scale = side / max(photo.shape[:2])
        w, h = max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale))
        img = np.asarray(Image.fromarray(photo).resize((w, h), Image.LANCZOS))
        jpegs.append(_jpeg(img, subsampling=int(rng.integers(0, 3))))
        hs.append(h)
        ws.append(w)
    return jpegs, np.array(hs), np.array(ws)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def photos():
    return _photo_set(16)


def test_region_decode_is_the_full_decode_window():
    """Identity resizes (box side * n / 8 == output side) read the decoded pixels straight: the region
    decode (crop_scanline + skip_scanlines) must equal that window of a full decode at the same scale."""
    ext = jpeg_cpu.load()
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        photo = getattr(skimage_data, name)()
        for subsampling in (0, 1, 2):
            data = _jpeg(photo, subsampling=subsampling)
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            for n in (8, 4, 2, 1):
                full = ext.decode_full(buf, n).numpy()
                step = 8 // n  # box corners on multiples of 8/n land on whole scaled pixels
                for _ in range(6):
                    side = int(rng.integers(4, min(48, min(photo.shape[:2]) // step)))
                    box = side * step
                    top = int(rng.integers(0, (photo.shape[0] - box) // step + 1)) * step
                    left = int(rng.integers(0, (photo.shape[1] - box) // step + 1)) * step
                    out = torch.empty(1, side, side, 3, dtype=torch.uint8)
                    failed = ext.decode_crop_batch(buf, torch.tensor([0, len(data)]),
                                                   torch.tensor([[top, left, box, box]], dtype=torch.float64),
                                                   torch.tensor([False]), out, 1, True)
                    assert not failed
                    t, lft = top // step, left // step
                    np.testing.assert_array_equal(out[0].numpy(), full[t : t + side, lft : lft + side],
                                                  err_msg=f"{name} 4:{subsampling} scale {n}/8 box {top, left, box}")


def test_resize_is_crop_resize_h_bit_for_bit(photos, tmp_path):
    """The decoder's resize loops (arranged for speed) give the bytes of the header's own host path
    (cuda_ext/crop_host.py, the CUDA kernel's stand-in) on the same decoded pixels: at full scale on the
    full decode, and at DCT scale n/8 on the full decode at that scale with the box scaled by n/8."""
    from fasttrain.cuda_ext.crop_host import build_host_library, host_crop_resize

    try:
        dll = build_host_library(tmp_path)
    except RuntimeError as e:
        pytest.skip(str(e))
    ext = jpeg_cpu.load()
    jpegs, hs, ws = photos
    ids = np.arange(len(jpegs))
    boxes = np.stack(rrc_params(hs, ws, ids, seed=4, epoch=1), 1).astype(np.float64)
    flips = flip_flags(ids, 4, 1)
    for res, scaling in ((96, False), (64, True), (224, True)):
        ours = CpuCropDecoder(2, dct_scaling=scaling)(jpegs, boxes, flips, res)
        for i, jpeg in enumerate(jpegs):
            n = 8
            if scaling:
                n = next((k for k in (1, 2, 4) if min(boxes[i, 2:]) * k / 8 >= res), 8)
            image = ext.decode_full(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), n).permute(2, 0, 1)
            want = host_crop_resize(dll, [image], boxes[i : i + 1] * n / 8, flips[i : i + 1], res)
            assert torch.equal(ours[i], want[0]), (i, res, n)


def test_full_scale_equals_the_reference_within_one_level(photos):
    jpegs, hs, ws = photos
    ids = np.arange(len(jpegs))
    boxes = np.stack(rrc_params(hs, ws, ids, seed=0, epoch=0), 1)
    flips = flip_flags(ids, 0, 0)
    ours = CpuCropDecoder(2, dct_scaling=False)(jpegs, boxes, flips, 96)
    ref = ReferenceCropDecoder()(jpegs, boxes, flips, 96)
    diff = (ours.int() - ref.int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() < 0.01  # and rarely even that


@pytest.mark.parametrize("res", [224, 128])
def test_dct_scaling_stays_close_to_the_reference(photos, res):
    jpegs, hs, ws = photos
    ids = np.arange(len(jpegs))
    boxes = np.stack(rrc_params(hs, ws, ids, seed=1, epoch=3), 1)
    flips = flip_flags(ids, 1, 3)
    ours = CpuCropDecoder(2)(jpegs, boxes, flips, res)
    ref = ReferenceCropDecoder()(jpegs, boxes, flips, res)
    scaled = 0
    for i in range(len(jpegs)):
        mad = (ours[i].float() - ref[i].float()).abs().mean().item()
        assert mad < 2.0 and _psnr(ours[i], ref[i]) > 30, (i, boxes[i], mad, _psnr(ours[i], ref[i]))
        scaled += min(boxes[i, 2:]) * 7 / 8 >= res  # this image decoded below full scale
    assert scaled >= 3  # the test exercises the DCT scaling
    # the same images with the flip undone: a wrong flip would be far off
    unflipped = ReferenceCropDecoder()(jpegs, boxes, ~flips, res)
    assert min(_psnr(ours[i], unflipped[i]) for i in np.flatnonzero(flips)) < 30


def test_centre_crop_and_grey_jpegs(photos):
    jpegs, hs, ws = photos
    grey = _jpeg(skimage_data.coffee(), mode="L")
    jpegs = [*jpegs[:6], grey]
    hs, ws = np.append(hs[:6], 400), np.append(ws[:6], 600)
    boxes = np.stack(centre_crop_box(hs, ws, 160), 1)
    flips = np.zeros(len(jpegs), dtype=bool)
    ours = CpuCropDecoder(1, dct_scaling=False)(jpegs, boxes, flips, 160)
    ref = ReferenceCropDecoder()(jpegs, boxes, flips, 160)
    assert (ours.int() - ref.int()).abs().max() <= 1
    assert (ours[-1, ..., 0] == ours[-1, ..., 1]).all() and (ours[-1, ..., 1] == ours[-1, ..., 2]).all()


def test_threads_do_not_change_the_bytes(photos):
    jpegs, hs, ws = photos
    ids = np.arange(len(jpegs))
    boxes, flips = np.stack(rrc_params(hs, ws, ids, 2, 0), 1), flip_flags(ids, 2, 0)
    one = CpuCropDecoder(1)(jpegs, boxes, flips, 112)
    three = CpuCropDecoder(3)(jpegs, boxes, flips, 112)
    assert torch.equal(one, three)


def test_bad_images_are_named_by_position(photos):
    jpegs, hs, ws = photos
    cmyk = _jpeg(skimage_data.chelsea(), mode="CMYK")
    truncated_header = jpegs[1][:100]
    box = np.array([[0, 0, 50, 50]] * 3)
    flips = np.zeros(3, dtype=bool)
    for decoder in (CpuCropDecoder(2), ReferenceCropDecoder()):
        with pytest.raises(JpegDecodeError) as e:
            decoder([jpegs[0], b"not a jpeg at all", jpegs[2]], box, flips, 32)
        assert e.value.position == 1 and "JPEG" in e.value.message
        with pytest.raises(JpegDecodeError) as e:
            decoder([jpegs[0], jpegs[2], truncated_header], box, flips, 32)
        assert e.value.position == 2
        with pytest.raises(JpegDecodeError, match="outside"):
            decoder([jpegs[0]], np.array([[0, 0, hs[0] + 1, 10]]), flips[:1], 32)
    with pytest.raises(JpegDecodeError, match="CMYK") as e:
        CpuCropDecoder(2)([jpegs[0], cmyk], box[:2], flips[:2], 32)
    assert e.value.position == 1
