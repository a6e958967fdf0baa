"""CI guard for the CUDA kernels on machines without a GPU: compile cuda_ext/csrc with nvcc for sm_90
(TORCH_CUDA_ARCH_LIST=9.0, CUDA_HOME found from nvcc) into a fresh directory, load the library, check the
CUDA kernels registered against the Python-declared schemas, and run the kernel's own block/thread code
in its host emulation against the reference for every option combination (aligned and unaligned output
buffers, poisoned first). A kernel that does not compile, link, register or compute right fails here.
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

sys.path.insert(0, str(Path(__file__).parent))
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

pytestmark = pytest.mark.slow  # an nvcc build: about a minute alone, several on a busy 2-core machine


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
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.0", CUDA_VISIBLE_DEVICES="", FASTTRAIN_EXT_VERBOSE="0")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from fasttrain.cuda_ext import build; build(sys.argv[1])", str(build_dir)],
        env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, f"nvcc build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    libs = list(build_dir.glob(f"{loader.NAME}*.so"))
    assert len(libs) == 1, f"expected one library in {build_dir}, found {libs}"
    return libs[0]


def test_kernels_compile_for_sm90_and_register(built_library):
    load_once(built_library)
    for op in ("fasttrain::augment", "fasttrain::augment_out"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has no CUDA kernel"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), f"{op} lost its CPU kernel"
    cuobjdump = Path(loader.find_cuda_home()) / "bin" / "cuobjdump"
    if cuobjdump.exists():  # not in every (minimal) toolkit; when present, the cubin must be for sm_90
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(built_library)], capture_output=True, text=True,
                                 check=False)
        assert "sm_90" in listing.stdout, listing.stdout + listing.stderr


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
