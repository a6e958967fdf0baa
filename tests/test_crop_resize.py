"""The crop-resize arithmetic (cuda_ext/csrc/crop_resize.h) against its torchvision reference, on real photos.

"The header on the host" is crop_resize.h's separable host implementation compiled by plain g++ (the way
the CPU JPEG decoder uses it) and called through ctypes: it must match torchvision's resized_crop on
float32 with antialias=True within +-1 level for integer boxes (shrinking, enlarging, flipped, at the
image's edges, 1-pixel boxes), and it must give the same bytes whatever the host compiler's target
(-march=native with -ffp-contract=off vs the x86-64 baseline). The kernel's emulation is compared with it
bit for bit in tests/test_cuda_build.py (needs an nvcc build); the CUDA op with the emulation in the GPU
test here (skips without a GPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttrain.augment.crop_reference import resized_crop_reference
from fasttrain.cuda_ext.crop_host import build_host_library, host_crop_resize
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # 512x512, 400x600, 300x451, 427x640


def compile_host(out_dir: Path, *flags: str):
    if shutil.which("g++") is None:
        pytest.skip("no g++ on this machine")
    return build_host_library(out_dir, *flags)


def photos() -> list[torch.Tensor]:
    """Real colour photographs as (3, H, W) uint8: half planar (decode_jpeg's layout), half HWC views."""
    from skimage import data

    out = []
    for k, name in enumerate(PHOTOS):
        hwc = torch.from_numpy(np.ascontiguousarray(getattr(data, name)()[..., :3]))
        out.append(hwc.permute(2, 0, 1).contiguous() if k % 2 == 0 else hwc.permute(2, 0, 1))
    return out


def integer_cases(images: list[torch.Tensor], seed: int = 0):
    """(image index, box, flip, size) covering shrinking, enlarging, flips, edge boxes and 1-pixel boxes,
    plus random RandomResizedCrop-like boxes."""
    rng = np.random.default_rng(seed)
    cases = []
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        cases += [
            (i, (0, 0, h, w), False, 64),  # whole image, shrinking ~8x
            (i, (0, 0, h, w), True, 224 if i == 0 else 100),  # whole image, flipped
            (i, (h - 30, w - 20, 30, 20), True, 96),  # bottom-right corner, enlarging
            (i, (0, w - 100, 60, 100), False, 48),  # top-right edge
            (i, (0, 0, 1, 1), False, 8),  # 1-pixel boxes: a constant output
            (i, (h - 1, w - 1, 1, 1), True, 5),
            (i, (h // 2, 3, 1, w - 6), False, 32),  # one row, shrinking across, enlarging down
            (i, (2, w // 3, h - 4, 1), True, 16),  # one column
            (i, (h // 4, w // 4, h // 2, w // 2), False, h // 2),  # same height: the identity along one axis
        ]
        for _ in range(2):  # RandomResizedCrop-like: area 8%..100%, ratio 3/4..4/3
            area = h * w * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            bh = int(min(h, max(1, round(np.sqrt(area / ratio)))))
            bw = int(min(w, max(1, round(np.sqrt(area * ratio)))))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            cases.append((i, (y0, x0, bh, bw), bool(rng.integers(2)), int(rng.choice([32, 64, 112]))))
    return cases


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return compile_host(tmp_path_factory.mktemp("crop_host"))


def run_cases(fn, images, cases):
    """fn(images, boxes, flips, size) per case -> list of (case, (S, S, 3) uint8)."""
    return [(case, fn([images[case[0]]], [case[1]], [case[2]], case[3])[0]) for case in cases]


def test_host_header_matches_torchvision_within_one_level(host):
    images = photos()
    cases = integer_cases(images)
    exact = total = 0
    for (i, box, flip, size), got in run_cases(lambda *a: host_crop_resize(host, *a), images, cases):
        want = resized_crop_reference([images[i]], [box], [flip], size)[0]
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1, f"{PHOTOS[i]} box {box} flip {flip} -> {size}: max diff {diff.max()}"
        exact += int((diff == 0).sum())
        total += diff.numel()
    assert exact / total > 0.999, f"only {exact / total:.5f} of the values equal the reference"
    # the 1-pixel box gives that pixel everywhere
    im = images[1]
    one = host_crop_resize(host, [im], [(0, 0, 1, 1)], [False], 4)[0]
    assert torch.equal(one, im[:, 0, 0].expand(4, 4, 3))


def test_flip_mirrors_the_output_columns(host):
    im = photos()[0]
    box = (37, 11, 300, 211)
    plain = host_crop_resize(host, [im], [box], [False], 57)[0]
    flipped = host_crop_resize(host, [im], [box], [True], 57)[0]
    assert torch.equal(flipped, plain.flip(1))


def test_fractional_boxes_and_boxes_reaching_outside(host):
    """Float boxes (the CPU decoder's after DCT scaling) interpolate between the integer ones' results;
    a box reaching outside the image repeats the edge pixels (taps clamp to the image)."""
    im = photos()[2]
    a = host_crop_resize(host, [im], [(40.0, 60.0, 200.0, 200.0)], [False], 50)[0].int()
    b = host_crop_resize(host, [im], [(40.25, 60.5, 200.0, 200.0)], [False], 50)[0].int()
    assert 0 < (a - b).abs().float().mean() < 4
    h, w = im.shape[1:]
    out = host_crop_resize(host, [im], [(h - 10.0, -10.0, 20.0, 20.0)], [False], 20)[0]
    assert torch.equal(out[-1, 0], im[:, h - 1, 0])  # the corner beyond the image shows the corner pixel


def test_host_bytes_do_not_depend_on_the_compiler_target(host, tmp_path):
    """-march=native (FMA, AVX-512 where present) with -ffp-contract=off gives the baseline's bytes."""
    native = compile_host(tmp_path / "native", "-O3", "-march=native")
    images = photos()
    cases = integer_cases(images, seed=1)[::3]
    frac_boxes = [(3.3, 7.7, 201.9, 150.2), (0.5, 0.5, 10.25, 30.75)]
    for (i, box, flip, size), got in run_cases(lambda *a: host_crop_resize(native, *a), images, cases):
        want = host_crop_resize(host, [images[i]], [box], [flip], size)[0]
        assert torch.equal(got, want), (PHOTOS[i], box, flip, size)
    for box in frac_boxes:
        assert torch.equal(host_crop_resize(native, images[:1], [box], [True], 40),
                           host_crop_resize(host, images[:1], [box], [True], 40))


def test_reference_rejects_fractional_and_outside_boxes():
    im = photos()[0]
    with pytest.raises(ValueError, match="integer boxes"):
        resized_crop_reference([im], [(0.5, 0, 10, 10)], [False], 8)
    with pytest.raises(ValueError, match="not inside"):
        resized_crop_reference([im], [(500, 0, 20, 10)], [False], 8)


@pytest.mark.gpu
def test_cuda_op_equals_its_emulation_bit_for_bit():
    """The CUDA kernel on the GPU gives the emulation's bytes (same header, explicitly rounded operations),
    for planar (decode_jpeg's) and strided images, integer and fractional boxes, and a batch of mixed sizes."""
    from fasttrain.cuda_ext import load

    load()
    images = photos()
    cases = integer_cases(images, seed=2)
    for size in (24, 224):
        sel = cases[: 2 * len(images)]
        ims = [images[c[0]] for c in sel]
        boxes = torch.tensor([c[1] for c in sel], dtype=torch.float32)
        boxes[1::2] += torch.tensor([0.3, 0.6, -0.2, 0.1])  # fractional
        flips = torch.tensor([c[2] for c in sel])
        want = torch.ops.fasttrain._crop_resize_emulated(ims, boxes, flips, size)
        got = torch.ops.fasttrain.crop_resize([im.cuda() for im in ims], boxes, flips, size)
        assert got.is_cuda and got.shape == (len(sel), size, size, 3)
        assert torch.equal(got.cpu(), want), f"size {size}: {(got.cpu().int() - want.int()).abs().max()}"


def test_dali_back_end_takes_our_boxes_on_the_cpu():
    """The DALI graph (image_slice with our boxes + resize + flip) on DALI's CPU back-end: the same crops as
    the reference up to DALI's own resampling (its mixed back-end on a GPU runs the same graph)."""
    pytest.importorskip("nvidia.dali")
    from torchvision.io import decode_jpeg, encode_jpeg

    from fasttrain.pipelines.stream_gpu import DaliCropDecoder

    images = photos()[:3]
    jpegs = [encode_jpeg(im.contiguous(), quality=95).numpy().tobytes() for im in images]
    decoded = [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8)) for j in jpegs]
    boxes = np.array([(10, 20, 300, 200), (0, 0, 400, 600), (100, 50, 50, 80)], np.float32)
    flips = np.array([True, False, True])
    got = DaliCropDecoder("cpu", num_threads=1)(jpegs, boxes, flips, 48)
    want = resized_crop_reference(decoded, boxes, flips, 48)
    diff = (got.int() - want.int()).abs()
    assert got.shape == (3, 48, 48, 3) and diff.float().mean() < 0.5 and (diff > 2).float().mean() < 0.01, \
        f"mean {diff.float().mean():.3f}, max {diff.max()}"
    mirrored = DaliCropDecoder("cpu", num_threads=1)(jpegs, boxes, ~flips, 48)
    assert (mirrored.flip(2).int() - got.int()).abs().max() <= 1  # the flip mirrors the columns


@pytest.mark.gpu
def test_nvjpeg_decoder_crops_exactly_as_the_emulation():
    """NvjpegCropDecoder: nvJPEG's decoded images through the kernel give the emulation's bytes on the same
    decoded pixels (the JPEG decoder's rounding is the only difference from the CPU path)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    from fasttrain.pipelines.stream_gpu import NvjpegCropDecoder

    images = photos()
    jpegs = [encode_jpeg(im.contiguous(), quality=90).numpy().tobytes() for im in images]
    boxes = np.array([(0, 0, 300, 300), (10, 20, 200, 100), (5, 5, 1, 1), (100, 200, 300, 400)], np.float32)
    flips = np.array([False, True, False, True])
    got = NvjpegCropDecoder("cuda")(jpegs, boxes, flips, 64)
    on_gpu = decode_jpeg([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs], device="cuda")
    want = torch.ops.fasttrain._crop_resize_emulated([im.cpu() for im in on_gpu], torch.from_numpy(boxes),
                                                     torch.from_numpy(flips), 64)
    assert got.is_cuda and torch.equal(got.cpu(), want)
