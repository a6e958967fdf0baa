"""CI guard for the CUDA kernels on machines without a GPU: compile cuda_ext/csrc with nvcc for sm_80 and
sm_90 (TORCH_CUDA_ARCH_LIST="8.0;9.0", CUDA_HOME found from nvcc) into a fresh directory, once for every
test here, load the library, check the CUDA kernels registered against the Python-declared schemas, and
run each kernel's own block/thread code in its host emulation: the augmentation op against its reference
for every option combination (aligned and unaligned output buffers, poisoned first); the crop-resize op
bit for bit against crop_resize.h's host path (g++) and within +-1 level of torchvision on real photos.
A kernel that does not compile, link, register or compute right fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fasttrain.cuda_ext import loader

from fasttrain.augment import apply, norm_constants
from fasttrain.augment.crop_reference import resized_crop_reference
from fasttrain.cuda_ext.crop_host import build_host_library, host_crop_resize

sys.path.insert(0, str(Path(__file__).parent))
from test_crop_resize import PHOTOS, integer_cases, photos
from test_fused_augment import (
    MEAN,
    STD,
    all_cases,
    assert_matches_reference,
    channel_constants,
    fresh_seed,
    random_case,
    run_out_variant,
)

pytestmark = pytest.mark.slow  # one build for two architectures: about a minute on a busy 2-core machine
ARCHS = ("8.0", "9.0")  # A100 and H100/H200


def load_once(library: Path) -> None:
    """Load the freshly built library unless this process already holds one (a GPU run's cached build
    of the same sources): registering the same kernels twice is an error."""
    import fasttrain.cuda_ext.ops  # noqa: F401  (the schemas the library registers against)

    if not hasattr(torch.ops.fasttrain, "_augment_out_emulated"):
        torch.ops.load_library(str(library))


@pytest.fixture(scope="module")
def built_library(tmp_path_factory) -> Path:
    if loader.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine: the kernels cannot be compiled here")
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support")
    build_dir = tmp_path_factory.mktemp("cuda_ext_build")
    # A fresh process, with no GPU visible, so the build is from scratch and provably GPU-free; this
    # process may already hold a (cached) copy of the library when GPU tests ran first.
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=";".join(ARCHS), CUDA_VISIBLE_DEVICES="", FASTTRAIN_EXT_VERBOSE="0")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from fasttrain.cuda_ext import build; build(sys.argv[1])", str(build_dir)],
        env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, f"nvcc build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    libs = list(build_dir.glob(f"{loader.NAME}*.so"))
    assert len(libs) == 1, f"expected one library in {build_dir}, found {libs}"
    return libs[0]


def test_kernels_compile_for_sm80_and_sm90_and_register(built_library):
    load_once(built_library)
    for op in ("fasttrain::augment", "fasttrain::augment_out"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has no CUDA kernel"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), f"{op} lost its CPU kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fasttrain::crop_resize", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fasttrain::_crop_resize_emulated", "CPU")
    archs = [f"sm_{a.replace('.', '')}" for a in ARCHS]
    cuobjdump = Path(loader.find_cuda_home()) / "bin" / "cuobjdump"
    if cuobjdump.exists():  # not in every (minimal) toolkit; when present, it lists one cubin per architecture
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(built_library)], capture_output=True, text=True,
                                 check=False)
        assert all(a in listing.stdout for a in archs), listing.stdout + listing.stderr
    else:  # the embedded cubins name their architecture
        blob = built_library.read_bytes()
        assert all(a.encode() in blob for a in archs), f"the library holds no cubin for one of {archs}"


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned-16B-stores", "unaligned-elementwise"])
def test_kernel_host_emulation_matches_reference(built_library, misalign):
    """The kernel's block_compute / block_store, run thread by thread on the CPU, against the reference:
    bit-exact (the emulation uses the same round-per-operation fp32 arithmetic)."""
    load_once(built_library)
    checked = 0
    for opts, (n, h, w), dtype in all_cases():
        checked += 1
        seed = fresh_seed()
        x, labels, params = random_case(n, h, w, seed=seed, **opts)
        scale, bias = channel_constants(opts["c"])
        where = f"emulated kernel {opts} {(n, h, w)} {dtype} misalign={misalign} seed={seed}"
        got = run_out_variant(torch.ops.fasttrain._augment_out_emulated, x, labels, params, scale, bias, dtype,
                              misalign)
        assert_matches_reference(got, apply(x, labels, params, scale, bias, dtype), exact_blend=True, where=where)
    assert checked == 192  # padding mode x padding x flip x cutout x 4 mixes x 3 dtypes
    # a strided (NCHW-stored) input through the emulation too
    x, labels, params = random_case(3, 20, 18, pad=3, pad_mode="zero", flip=True, cutout=True, mix="both",
                                    seed=fresh_seed())
    strided = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    scale, bias = norm_constants(MEAN, STD)
    got = run_out_variant(torch.ops.fasttrain._augment_out_emulated, strided, labels, params, scale, bias,
                          torch.float16, misalign)
    assert_matches_reference(got, apply(x, labels, params, scale, bias, torch.float16), exact_blend=True,
                             where="emulated kernel, strided input")


def test_kernel_argument_checks(built_library):
    """The C++ checks (shared by the CUDA op and the emulation) name the argument and the expectation."""
    load_once(built_library)
    x, labels, params = random_case(2, 6, 6, pad=1, pad_mode="reflect", flip=True, cutout=False, mix="none",
                                    seed=fresh_seed(), c=9)
    scale, bias = channel_constants(9)
    with pytest.raises(RuntimeError, match=r"1\.\.8 channels"):
        run_out_variant(torch.ops.fasttrain._augment_out_emulated, x, labels, params, scale, bias, torch.float32)
    x, labels, params = random_case(2, 6, 6, pad=1, pad_mode="reflect", flip=True, cutout=False, mix="none",
                                    seed=fresh_seed())
    params.offset = params.offset.long()
    scale, bias = norm_constants(MEAN, STD)
    with pytest.raises(RuntimeError, match=r"params.offset must be Int"):
        out = torch.empty(2, 3, 6, 6, memory_format=torch.channels_last)
        torch.ops.fasttrain._augment_out_emulated(x, labels, params.offset, params.flip, params.cutout,
                                                  params.mix_index, params.mix_lam, params.cutmix, scale, bias, 1,
                                                  True, out, labels.clone(), torch.empty(2))


# ------------------------------------------------------------------------------------------ crop_resize
def crop_cases():
    """Every crop case of test_crop_resize on real photos (integer boxes), plus fractional boxes, boxes
    reaching outside the image and a shrink wide enough to take the uncached-weights path (> 16 taps)."""
    images = photos()
    cases = integer_cases(images)
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        cases += [(i, (10.3, 20.7, h / 2 + 0.4, w / 3 - 0.2), i % 2 == 0, 40),
                  (i, (-5.5, w - 30.0, 40.0, 50.0), True, 24),  # reaching past the top and right edges
                  (i, (0, 0, h, w), False, 7)]  # ~60x shrink: 120+ taps per axis
    return images, cases


def test_crop_emulation_matches_the_host_header_bit_for_bit(built_library, tmp_path):
    """The kernel's per-thread code (emulated) gives the bytes of crop_resize.h's separable host path, the
    CPU JPEG decoder's code: one case per call, and all the cases of one size as one mixed-size batch."""
    load_once(built_library)
    lib = build_host_library(tmp_path)
    images, cases = crop_cases()
    for i, box, flip, size in cases:
        b, f = torch.tensor([box], dtype=torch.float32), torch.tensor([flip])
        got = torch.ops.fasttrain._crop_resize_emulated([images[i]], b, f, size)
        assert torch.equal(got, host_crop_resize(lib, [images[i]], b, f, size)), (PHOTOS[i], box, flip, size)
    batch = [c for c in cases if c[3] == 32]
    ims = [images[c[0]] for c in batch]
    b = torch.tensor([c[1] for c in batch], dtype=torch.float32)
    f = torch.tensor([c[2] for c in batch])
    got = torch.ops.fasttrain._crop_resize_emulated(ims, b, f, 32)
    assert got.shape == (len(batch), 32, 32, 3) and torch.equal(got, host_crop_resize(lib, ims, b, f, 32))


def test_crop_emulation_within_one_level_of_torchvision(built_library):
    load_once(built_library)
    images = photos()
    for i, box, flip, size in integer_cases(images, seed=3):
        b, f = torch.tensor([box], dtype=torch.float32), torch.tensor([flip])
        got = torch.ops.fasttrain._crop_resize_emulated([images[i]], b, f, size)
        want = resized_crop_reference([images[i]], [box], [flip], size)
        assert (got.int() - want.int()).abs().max() <= 1, (PHOTOS[i], box, flip, size)


def test_crop_argument_checks(built_library):
    """The C++ checks (shared by the CUDA op and the emulation) name the argument, the image and the fix."""
    load_once(built_library)
    im = photos()[0]
    op = torch.ops.fasttrain._crop_resize_emulated
    ok_box, ok_flip = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([False])
    with pytest.raises(RuntimeError, match=r"image 0 must be uint8 of shape \(3, H, W\)"):
        op([im.permute(1, 2, 0)], ok_box, ok_flip, 8)
    with pytest.raises(RuntimeError, match=r"boxes must be float32 of shape \(1, 4\)"):
        op([im], ok_box.double(), ok_flip, 8)
    with pytest.raises(RuntimeError, match=r"box 0 .* covers no pixel"):
        op([im], torch.tensor([[600.0, 0.0, 10.0, 10.0]]), ok_flip, 8)
    with pytest.raises(RuntimeError, match=r"box 0 .* must be finite"):
        op([im], torch.tensor([[0.0, 0.0, 0.0, 10.0]]), ok_flip, 8)
    with pytest.raises(RuntimeError, match=r"size must be in"):
        op([im], ok_box, ok_flip, 0)
