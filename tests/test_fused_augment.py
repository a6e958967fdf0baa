"""The fused augmentation op against the reference: numba on the CPU, the CUDA kernel on a GPU.

Every check draws fresh random images and parameters (the seed is in the failure message), writes into
poisoned output buffers (NaN / -1) and checks every element was written. Parameters are drawn directly,
not through the sampler, so edge cases appear: empty, clipped and whole-image boxes, lam of exactly 0 or
1, mixup and cutmix in the same batch, N = 1, H != W, sizes that are not multiples of the block.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fasttrain.augment as aug
from fasttrain.augment import AugmentConfig, AugmentSampler, apply, augment_batch, backend_for, norm_constants
from fasttrain.augment.fused import fused_apply, op_params
from fasttrain.augment.reference import AugParams

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MIXES = ("none", "mixup", "cutmix", "both")
# (N, H, W): N = 1, H != W, 32 and 64 px, sizes that are not multiples of the 256-pixel block, 1 x 1
SHAPES = ((1, 9, 13), (5, 12, 10), (3, 32, 32), (2, 64, 64), (4, 17, 23), (3, 1, 1), (2, 40, 24))


def channel_constants(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) for C channels: CIFAR's for RGB, other plausible values otherwise."""
    mean = (MEAN * 2)[:c] if c != 3 else MEAN
    std = (STD * 2)[:c] if c != 3 else STD
    return norm_constants(mean, std)


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def random_box(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """int32 (n, 4) half-open boxes: random corners in [-2, size + 2] (so some are empty, inverted or
    clipped), plus the whole image and an empty box when n allows."""
    ys = torch.randint(-2, h + 3, (n, 2), generator=g)
    xs = torch.randint(-2, w + 3, (n, 2), generator=g)
    lo_y, hi_y = torch.minimum(ys[:, 0], ys[:, 1]), torch.maximum(ys[:, 0], ys[:, 1])
    lo_x, hi_x = torch.minimum(xs[:, 0], xs[:, 1]), torch.maximum(xs[:, 0], xs[:, 1])
    box = torch.stack([lo_y, lo_x, hi_y, hi_x], 1)
    if n > 1:
        box[0] = torch.tensor([0, 0, h, w])
        box[1] = torch.tensor([3, 3, 3, 5])  # empty
    if n > 2:
        box[2] = torch.tensor([6, 2, 2, 7])  # inverted: empty too
    return box.to(torch.int32).clamp(0, max(h, w))


def random_case(n, h, w, *, pad, pad_mode, flip, cutout, mix, seed, c=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 100, (n,), generator=g)
    offset = torch.randint(0, 2 * pad + 1, (n, 2), generator=g, dtype=torch.int32)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    cut = random_box(n, h, w, g) if cutout else torch.zeros(n, 4, dtype=torch.int32)
    mixing = mix != "none"
    mix_index = torch.randperm(n, generator=g) if mixing else torch.arange(n)
    lam = torch.ones(n)
    if mix in ("mixup", "both"):
        lam = torch.rand(n, generator=g)
        lam[: min(n, 2)] = torch.tensor([0.0, 1.0])[: min(n, 2)]
    cutmix = random_box(n, h, w, g) if mix in ("cutmix", "both") else torch.zeros(n, 4, dtype=torch.int32)
    params = AugParams(offset, flips, cut, mix_index, lam.float(), cutmix, pad=pad, pad_mode=pad_mode,
                       has_cutout=cutout, has_mix=mixing)
    return x, labels, params


def all_cases():
    """Every option combination, each on a different shape; mostly RGB, some 1- and 4-channel images
    (the CUDA kernel has a compile-time path for C = 3 and a generic one)."""
    combos = itertools.product(("reflect", "zero"), (False, True), (False, True), (False, True), MIXES, DTYPES)
    for k, (pad_mode, padded, flip, cutout, mix, dtype) in enumerate(combos):
        n, h, w = SHAPES[k % len(SHAPES)]
        pad = 0 if not padded or min(h, w) == 1 else 1 + k % min(4, min(h, w) - 1)
        c = (3, 3, 1, 3, 4)[k % 5]
        opts = {"pad": pad, "pad_mode": pad_mode, "flip": flip, "cutout": cutout, "mix": mix, "c": c}
        yield opts, (n, h, w), dtype


def poisoned(n, c, h, w, dtype, device, misalign=False):
    """An (N, C, H, W) channels_last buffer full of NaN; `misalign` shifts its storage by one element so
    the kernel's unaligned (element-wise) store path runs."""
    shift = 1 if misalign else 0
    flat = torch.full((n * h * w * c + shift,), float("nan"), dtype=dtype, device=device)
    return flat[shift:].view(n, h, w, c).permute(0, 3, 1, 2)


def run_out_variant(op, x, labels, params, scale, bias, dtype, misalign=False):
    n, h, w, c = x.shape
    out = poisoned(n, c, h, w, dtype, x.device, misalign)
    y_b = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    lam = torch.full((n,), float("nan"), device=x.device)
    op(x, labels, *op_params(params, x.device), scale, bias, params.pad, params.pad_mode == "reflect", out, y_b, lam)
    return out, y_b, lam


def assert_matches_reference(got, want, *, exact_blend: bool, where: str):
    out, y_b, lam = got
    ref, targets = want
    assert not out.isnan().any(), f"{where}: unwritten (poisoned) output elements remain"
    assert (y_b >= 0).all() and not lam.isnan().any(), f"{where}: targets not written"
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if exact_blend:
        assert torch.equal(out, ref), f"{where}: max diff {(out.float() - ref.float()).abs().max()}"
        assert torch.equal(lam, targets.lam), where
    else:  # blends within one rounding of the output dtype, everything else exact
        torch.testing.assert_close(out, ref, rtol=torch.finfo(ref.dtype).eps, atol=1e-6, msg=where)
        torch.testing.assert_close(lam, targets.lam, rtol=1e-6, atol=1e-7, msg=where)
    assert torch.equal(y_b, targets.y_b), where


# ------------------------------------------------------------------------------------------ numba (CPU)
def test_numba_matches_reference_every_combination():
    checked = 0
    for opts, (n, h, w), dtype in all_cases():
        seed = fresh_seed()
        x, labels, params = random_case(n, h, w, seed=seed, **opts)
        scale, bias = channel_constants(opts["c"])
        where = f"numba {opts} {(n, h, w)} {dtype} seed={seed}"
        got = run_out_variant(torch.ops.fasttrain.augment_out, x, labels, params, scale, bias, dtype)
        assert_matches_reference(got, apply(x, labels, params, scale, bias, dtype), exact_blend=True, where=where)
        checked += 1
    assert checked == 2 * 2 * 2 * 2 * len(MIXES) * len(DTYPES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_sampler_params_and_layouts(dtype):
    """Realistic params from the sampler; a strided (NCHW-stored) input; the functional op's result is
    channels_last and equal to the reference."""
    seed = fresh_seed()
    cfg = AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True, cutout=8, mixup_alpha=0.4, cutmix_alpha=1.0)
    scale, bias = norm_constants(MEAN, STD)
    g = torch.Generator().manual_seed(seed)
    nchw = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    x = nchw.permute(0, 2, 3, 1)  # (N, H, W, C) view of NCHW storage
    labels = torch.randint(0, 10, (16,), generator=g)
    for _ in range(3):
        params = AugmentSampler(cfg, seed=seed).sample(16, 32, 32)
        out, targets = fused_apply(x, labels, params, scale, bias, dtype)
        ref, ref_t = apply(x.contiguous(), labels, params, scale, bias, dtype)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, ref), f"seed={seed}"
        assert torch.equal(targets.y_b, ref_t.y_b) and torch.equal(targets.lam, ref_t.lam)
        seed += 1


def test_bf16_and_fp16_casts_round_to_nearest_even():
    """The numba bit-level casts against torch's on values that stress rounding: ties, subnormals,
    overflow to inf, huge and tiny magnitudes. A 16-channel pixel of value 1 with scale = the values
    and bias = 0 produces exactly those values before the cast."""
    specials = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 65519.0,
                65520.0, 1e5, -1e5, 2**-24, 3 * 2**-25, 2**-25, 2**-26, 6.1e-5, -6.0e-8, 3.0e38, -3.4e38, 1e-40]
    g = torch.Generator().manual_seed(fresh_seed())
    values = torch.cat([torch.tensor(specials), torch.randn(4000, generator=g) * torch.logspace(-9, 5, 4000)])
    values = torch.cat([values, torch.zeros(-len(values) % 16)]).float()
    x = torch.ones(1, 1, 1, 16, dtype=torch.uint8)
    for dtype in (torch.bfloat16, torch.float16):
        got = torch.cat([fused_apply(x, torch.zeros(1, dtype=torch.long), aug.identity_params(1), chunk,
                                     torch.zeros(16), dtype)[0].flatten() for chunk in values.split(16)])
        want = (values * 1.0 + 0.0).to(dtype)
        same = (got == want) | (got.isnan() & want.isnan())
        assert same.all(), f"{dtype}: {values[~same][:5]} -> {got[~same][:5]}, torch gives {want[~same][:5]}"


def test_numba_rejects_out_of_range_params():
    scale, bias = norm_constants(MEAN, STD)
    x, labels, params = random_case(4, 8, 8, pad=2, pad_mode="reflect", flip=True, cutout=False, mix="mixup",
                                    seed=fresh_seed())
    bad = AugParams(params.offset.clone(), params.flip, params.cutout, params.mix_index.clone(), params.mix_lam,
                    params.cutmix, pad=2, pad_mode="reflect")
    bad.mix_index[0] = 4
    with pytest.raises(ValueError, match="mix_index"):
        fused_apply(x, labels, bad, scale, bias)
    bad.mix_index[0] = 0
    bad.offset[1, 1] = 5
    with pytest.raises(ValueError, match="offset"):
        fused_apply(x, labels, bad, scale, bias)


def test_op_argument_errors_name_the_argument():
    scale, bias = norm_constants(MEAN, STD)
    x, labels, params = random_case(3, 8, 8, pad=0, pad_mode="zero", flip=False, cutout=False, mix="none",
                                    seed=fresh_seed())
    args = op_params(params, x.device)
    with pytest.raises(ValueError, match=r"params.offset must be torch.int32"):
        torch.ops.fasttrain.augment(x, labels, args[0].long(), *args[1:], scale, bias, 0, False, torch.float32)
    with pytest.raises(ValueError, match=r"images must be 4-d uint8"):
        torch.ops.fasttrain.augment(x[0], labels, *args, scale, bias, 0, False, torch.float32)
    with pytest.raises(ValueError, match=r"out must be \(N, C, H, W\)"):
        out = torch.empty(3, 3, 8, 8)  # NCHW, not channels_last
        torch.ops.fasttrain.augment_out(x, labels, *args, scale, bias, 0, False, out, labels.clone(), torch.ones(3))
    with pytest.raises(ValueError, match="out_dtype"):
        fused_apply(x, labels, params, scale, bias, torch.float64)


def test_opcheck_schema_fake_and_cpu_kernel_agree():
    """torch.library.opcheck: schema, fake (meta) implementation and CPU kernel are consistent."""
    scale, bias = norm_constants(MEAN, STD)
    x, labels, params = random_case(4, 12, 10, pad=2, pad_mode="zero", flip=True, cutout=True, mix="both",
                                    seed=fresh_seed())
    args = (x, labels, *op_params(params, x.device), scale, bias, 2, False)
    torch.library.opcheck(torch.ops.fasttrain.augment.default, (*args, torch.bfloat16))
    out = torch.empty(4, 3, 12, 10, memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fasttrain.augment_out.default,
                          (*args, out, torch.empty(4, dtype=torch.long), torch.empty(4)))


@pytest.mark.slow
def test_op_inside_torch_compile():
    """The op traces through torch.compile (fake implementation) with fullgraph=True and runs the kernel."""
    scale, bias = norm_constants(MEAN, STD)
    x, labels, params = random_case(6, 16, 16, pad=2, pad_mode="reflect", flip=True, cutout=True, mix="mixup",
                                    seed=fresh_seed())
    p = op_params(params, x.device)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(x, labels, *p):
        out, _, lam = torch.ops.fasttrain.augment(x, labels, *p, scale, bias, 2, True, torch.float32)
        return out * 2.0, lam.sum()

    out2, lam_sum = step(x, labels, *p)
    ref, targets = apply(x, labels, params, scale, bias)
    assert torch.equal(out2, ref * 2.0)
    assert torch.allclose(lam_sum, targets.lam.sum())


# ------------------------------------------------------------------------------------------ dispatch
def test_dispatch_defaults_to_numba_on_cpu_and_env_forces_reference(monkeypatch):
    monkeypatch.delenv("FASTTRAIN_AUGMENT", raising=False)
    assert backend_for(torch.device("cpu")) == "numba"
    monkeypatch.setenv("FASTTRAIN_AUGMENT", "reference")
    assert backend_for(torch.device("cpu")) == "reference"
    calls = []
    monkeypatch.setattr(aug, "apply", lambda *a, **k: calls.append(1) or apply(*a, **k))
    scale, bias = norm_constants(MEAN, STD)
    x, labels, params = random_case(2, 8, 8, pad=1, pad_mode="reflect", flip=True, cutout=True, mix="none",
                                    seed=fresh_seed())
    out_ref, _ = augment_batch(x, labels, params, scale, bias)
    assert calls == [1]
    monkeypatch.setenv("FASTTRAIN_AUGMENT", "auto")
    out_fused, targets = augment_batch(x, labels, params, scale, bias)
    assert calls == [1] and torch.equal(out_ref, out_fused)
    assert targets.y_b is targets.y_a  # no mixing: the loss can skip its second cross-entropy
    monkeypatch.setenv("FASTTRAIN_AUGMENT", "fastest")
    with pytest.raises(ValueError, match="FASTTRAIN_AUGMENT"):
        backend_for(torch.device("cpu"))


def test_unbuildable_extension_is_an_error_on_cuda_unless_the_reference_is_forced(monkeypatch):
    """A CUDA device whose extension cannot be built: an error with the reason and the fix (a silent
    fallback would make a GPU run several times slower unnoticed); FASTTRAIN_AUGMENT=reference runs the
    reference without trying to build. On a CPU without numba: one warning, then the reference."""
    import fasttrain.cuda_ext as ext

    def fail():
        raise ext.ExtensionUnavailable("no CUDA toolkit found (test)", "install nvcc and set CUDA_HOME")

    monkeypatch.delenv("FASTTRAIN_AUGMENT", raising=False)
    monkeypatch.setattr(ext, "load", fail)
    with pytest.raises(ext.ExtensionUnavailable, match=r"no CUDA toolkit found \(test\).*Fix: install nvcc"):
        backend_for(torch.device("cuda"))
    with pytest.raises(ext.ExtensionUnavailable, match="no CUDA toolkit"):
        backend_for(torch.device("cuda"), "fused")
    monkeypatch.setenv("FASTTRAIN_AUGMENT", "reference")
    assert backend_for(torch.device("cuda")) == "reference"

    monkeypatch.delenv("FASTTRAIN_AUGMENT")
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    monkeypatch.delitem(sys.modules, "fasttrain.augment.numba_cpu", raising=False)
    monkeypatch.delattr(aug, "numba_cpu", raising=False)
    monkeypatch.setattr(aug, "_warned", set())
    with pytest.warns(aug.FusedAugmentFallback, match="numba is not importable"):
        assert backend_for(torch.device("cpu")) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend_for(torch.device("cpu")) == "reference"  # no second warning


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a visible GPU")
def test_loader_names_the_missing_architecture_and_remembers_the_failure(tmp_path):
    """The real failure of this CPU machine, in a fresh process: no GPU and no TORCH_CUDA_ARCH_LIST, so
    there is nothing to compile for; the message says what to set, and a second load() in the same process
    raises the same error at once instead of trying the build again."""
    code = ("import time\n"
            "from fasttrain.cuda_ext import loader\n"
            "errors = []\n"
            "for _ in range(2):\n"
            "    t = time.perf_counter()\n"
            "    try:\n"
            "        loader.load()\n"
            "    except loader.ExtensionUnavailable as e:\n"
            "        errors.append((e, time.perf_counter() - t))\n"
            "(first, _), (second, again_s) = errors\n"
            "print(first is second, again_s < 0.01, first)\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env["FASTTRAIN_EXT_DIR"] = str(tmp_path / "build")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, fast, message = proc.stdout.strip().split(" ", 2)
    assert same == "True" and fast == "True", proc.stdout
    assert "TORCH_CUDA_ARCH_LIST is unset" in message and "Fix: set TORCH_CUDA_ARCH_LIST" in message


def test_loader_names_a_missing_toolkit(monkeypatch):
    from fasttrain.cuda_ext import loader

    monkeypatch.setattr(loader, "find_cuda_home", lambda: None)  # the one seam: this machine has a toolkit
    with pytest.raises(loader.ExtensionUnavailable, match="no CUDA toolkit found.*Fix: install the CUDA toolkit"):
        loader.build()


# ------------------------------------------------------------------------------------------ CUDA (GPU)
@pytest.mark.gpu
@pytest.mark.parametrize("misalign", [False, True])
def test_cuda_matches_reference_every_combination(misalign):
    from fasttrain.cuda_ext import load

    load()  # raises (no silent fallback) if the extension cannot be built
    for opts, (n, h, w), dtype in all_cases():
        seed = fresh_seed()
        x, labels, params = random_case(n, h, w, seed=seed, **opts)
        scale, bias = (t.cuda() for t in channel_constants(opts["c"]))
        x, labels, params = x.cuda(), labels.cuda(), params.to("cuda")
        where = f"cuda {opts} {(n, h, w)} {dtype} misalign={misalign} seed={seed}"
        got = run_out_variant(torch.ops.fasttrain.augment_out, x, labels, params, scale, bias, dtype, misalign)
        want = apply(x, labels, params, scale, bias, dtype)
        assert_matches_reference(got, want, exact_blend=False, where=where)
        if opts["mix"] in ("none", "cutmix"):  # no blending: bit-exact
            assert torch.equal(got[0], want[0]), where


@pytest.mark.gpu
def test_cuda_functional_op_large_batch_strided_input_and_trainer_dispatch():
    from fasttrain.cuda_ext import load

    load()
    seed = fresh_seed()
    cfg = AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True, cutout=12, mixup_alpha=1.0, cutmix_alpha=1.0)
    scale, bias = (t.cuda() for t in norm_constants(MEAN, STD))
    g = torch.Generator(device="cuda").manual_seed(seed)
    for n, h, w in ((70000, 8, 8), (257, 64, 64), (3, 96, 128)):  # N beyond the 65535 grid limit
        nchw = torch.randint(0, 256, (n, 3, h, w), generator=g, device="cuda", dtype=torch.uint8)
        x = nchw.permute(0, 2, 3, 1)
        labels = torch.randint(0, 200, (n,), device="cuda", generator=g)
        params = AugmentSampler(cfg, seed=seed, device="cuda").sample(n, h, w)
        assert backend_for(x.device) == "cuda"
        out, targets = augment_batch(x, labels, params, scale, bias, torch.bfloat16)
        ref, ref_t = apply(x.contiguous(), labels, params, scale, bias, torch.bfloat16)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=torch.finfo(torch.bfloat16).eps, atol=1e-6, msg=f"seed={seed}")
        assert torch.equal(targets.y_b, ref_t.y_b)


def test_stale_build_lock_is_cleared_with_a_message_and_a_fresh_one_kept(tmp_path, capsys):
    """A build killed mid-way leaves torch's `lock` file, and every later load would wait on it forever."""
    import os
    import time

    from fasttrain.cuda_ext import loader

    lock = tmp_path / "lock"
    lock.write_text("")
    assert not loader.clear_stale_lock(tmp_path)  # a build in progress elsewhere: wait for it
    assert lock.exists()
    old = time.time() - loader.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert loader.clear_stale_lock(tmp_path)
    assert not lock.exists()
    assert "removing the stale CUDA build lock" in capsys.readouterr().err
    assert not loader.clear_stale_lock(tmp_path)  # nothing to clear
