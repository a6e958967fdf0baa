"""The fused augmentation on the CPU, in numba: one pass, parallel over the batch.

Implements exactly `reference.apply` (see its module docstring for the contract): each output element
is computed from the uint8 source in registers and written once; the mix partner's pixel is recomputed
from its own source rather than read from an intermediate tensor. Arithmetic is fp32 with the same
operation order as the reference and no fused multiply-add (numba leaves fastmath off), and the
bf16/fp16 casts are done on the bit patterns with round-to-nearest-even, so results match the
reference bit for bit on the CPU.

Entry point: `augment_into(x, labels, params..., out, y_b, lam)` on numpy views (see `fused.py`).
"""

from __future__ import annotations

try:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic
except ImportError as e:  # pragma: no cover - numba is a declared dependency
    raise ImportError(
        "the numba CPU augmentation needs numba: pip install numba (or set FASTTRAIN_AUGMENT=reference)"
    ) from e

__all__ = ["augment_into", "numba"]

OUT_F32, OUT_BF16, OUT_F16 = 0, 1, 2


@intrinsic
def _f32_bits(typingctx, v):
    """The IEEE bit pattern of a float32 as an int64 in [0, 2^32) (a register bitcast, no memory trip)."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, u):
    """The float32 whose bit pattern is the low 32 bits of the integer `u`."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(types.int64), codegen


# numba widens integer arithmetic to 64 bits, so the bit manipulations below work on int64 values of
# 32-bit patterns and never rely on 32-bit wrap-around.
@njit(inline="always", cache=True)
def _to_bf16(v):
    """float32 -> bfloat16 bits, round to nearest even (what torch's .to(bfloat16) does)."""
    u = _f32_bits(v)
    if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep it a quiet NaN
        return np.uint16((u >> 16) | 0x40)
    u = u + 0x7FFF + ((u >> 16) & 1)  # round half to even; a carry into the exponent is correct
    return np.uint16((u >> 16) & 0xFFFF)


@njit(inline="always", cache=True)
def _to_f16(v):
    """float32 -> float16 bits, round to nearest even, subnormals and overflow included
    (F. Giesen's float_to_half_fast3_rtne)."""
    u = _f32_bits(v)
    sign = (u >> 16) & 0x8000
    u = u & 0x7FFFFFFF
    if u >= 0x47800000:  # >= 2^16: Inf, or NaN (made quiet)
        o = 0x7E00 if u > 0x7F800000 else 0x7C00
    elif u < 0x38800000:  # below the smallest normal half: subnormal or zero
        # adding 0.5 aligns the 10 mantissa bits at the bottom; the fp32 add does the RNE rounding
        o = _f32_bits(_bits_f32(u) + np.float32(0.5)) - 0x3F000000
    else:
        odd = (u >> 13) & 1
        o = (u - (112 << 23) + 0xFFF + odd) >> 13  # rebias the exponent (127 -> 15), round half to even
    return np.uint16(o | sign)


@njit(inline="always", cache=True)
def _source_index(k, size, reflect):
    """(index, inside) for a padded coordinate: torch-style reflect (no edge repeat) or zero padding.
    The final clamp only matters for out-of-contract offsets: it keeps reads inside the image."""
    inside = True
    if reflect:
        if k < 0:
            k = -k
        if k >= size:
            k = 2 * size - 2 - k
    elif k < 0 or k >= size:
        inside = False
    if k < 0:
        k = 0
    if k >= size:
        k = size - 1
    return k, inside


@njit(inline="always", cache=True)
def _pixel(x, k, r, rin, col, cin, cut, c, scale, bias):
    """pix(k) at one channel: normalised source value, bias for a zero pad, 0.0 inside the cutout."""
    if cut:
        return np.float32(0.0)
    if not (rin and cin):
        return bias[c]  # pixel value 0 normalises to exactly bias[c]
    prod = np.float32(x[k, r, col, c]) * scale[c]  # two separately rounded fp32 ops, as the reference
    return prod + bias[c]


@njit(cache=True)
def _check(n, offset, mix_index, pad):
    for k in range(n):
        if mix_index[k] < 0 or mix_index[k] >= n:
            raise ValueError("params.mix_index holds a value outside [0, N)")
        for d in range(2):
            if offset[k, d] < 0 or offset[k, d] > 2 * pad:
                raise ValueError("params.offset holds a value outside [0, 2 * pad]")


@njit(parallel=True, cache=True)
def _augment(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect, kind,
             out, y_b, lam_out):
    """out: (N, H, W, C) float32 when kind == OUT_F32, else uint16 bit patterns of bf16/fp16."""
    n_batch, h, w, ch = x.shape
    _check(n_batch, offset, mix_index, pad)
    hw = np.float32(h * w)
    one = np.float32(1.0)
    for n in prange(n_batch):
        m = mix_index[n]
        lam = mix_lam[n]
        one_minus_lam = one - lam
        # mixing off for this sample (lam == 1, no cutmix box) gives pix(n) exactly: skip the partner
        box_h = cutmix[n, 2] - cutmix[n, 0]
        box_w = cutmix[n, 3] - cutmix[n, 1]
        has_box = box_h > 0 and box_w > 0
        mixing = lam != one or has_box
        area = np.float32(max(box_h, 0) * max(box_w, 0))
        y_b[n] = labels[m]
        lam_out[n] = lam * (one - area / hw)
        for i in range(h):
            rn, rn_in = _source_index(i + offset[n, 0] - pad, h, reflect)
            rm, rm_in = _source_index(i + offset[m, 0] - pad, h, reflect)
            cut_row_n = i >= cutout[n, 0] and i < cutout[n, 2]
            cut_row_m = i >= cutout[m, 0] and i < cutout[m, 2]
            mix_row = has_box and i >= cutmix[n, 0] and i < cutmix[n, 2]
            for j in range(w):
                jn = w - 1 - j if flip[n] else j
                cn, cn_in = _source_index(jn + offset[n, 1] - pad, w, reflect)
                cut_n = cut_row_n and j >= cutout[n, 1] and j < cutout[n, 3]
                cm, cm_in, cut_m, in_box = 0, False, False, False
                if mixing:
                    jm = w - 1 - j if flip[m] else j
                    cm, cm_in = _source_index(jm + offset[m, 1] - pad, w, reflect)
                    cut_m = cut_row_m and j >= cutout[m, 1] and j < cutout[m, 3]
                    in_box = mix_row and j >= cutmix[n, 1] and j < cutmix[n, 3]
                for c_ in range(ch):
                    v = _pixel(x, n, rn, rn_in, cn, cn_in, cut_n, c_, scale, bias)
                    if mixing:
                        b = _pixel(x, m, rm, rm_in, cm, cm_in, cut_m, c_, scale, bias)
                        # cutmix box: the partner's pixel; elsewhere the blend, each product rounded
                        # to fp32 before the sum (no FMA), as the reference computes it
                        v = b if in_box else v * lam + b * one_minus_lam
                    if kind == OUT_F32:
                        out[n, i, j, c_] = v
                    elif kind == OUT_BF16:
                        out[n, i, j, c_] = _to_bf16(v)
                    else:
                        out[n, i, j, c_] = _to_f16(v)

def augment_into(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad: int,
                 reflect: bool, kind: int, out, y_b, lam_out) -> None:
    """Run the fused op on numpy arrays (shapes and dtypes already validated by the caller)."""
    _augment(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, np.int64(pad),
             bool(reflect), np.int64(kind), out, y_b, lam_out)
