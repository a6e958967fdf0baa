"""The fused augmentation on the CPU, in numba: one pass, parallel over the batch.

Implements exactly `reference.apply` (see its module docstring for the contract): each output element
is computed from the uint8 source in registers and written once; the mix partner's pixel is recomputed
from its own source rather than read from an intermediate tensor. Arithmetic is fp32 with the same
operation order as the reference and no fused multiply-add (numba leaves fastmath off), and the
bf16/fp16 casts are done on the bit patterns with round-to-nearest-even, so results match the
reference bit for bit on the CPU.

Work: each sample (in parallel) is processed row by row: the row's pix(n) values go to an fp32 row
buffer, the partner's row to a second one when the sample mixes, then the blend and the cast to the
output dtype run as simple loops over the row (which LLVM vectorises).

Entry point: `augment_into(x, labels, params..., out, y_b, lam)` (see `fused.py`).
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
    """Source coordinate of padded coordinate k, or -1 outside a zero pad. torch's reflect (no edge
    repeat); the clamp only matters for out-of-contract offsets (rejected by `_check`)."""
    if reflect:
        if k < 0:
            k = -k
        if k >= size:
            k = 2 * size - 2 - k
    elif k < 0 or k >= size:
        return -1
    return min(max(k, 0), size - 1)


@njit(cache=True)
def _check(n, offset, mix_index, pad):
    for k in range(n):
        if mix_index[k] < 0 or mix_index[k] >= n:
            raise ValueError("params.mix_index holds a value outside [0, N)")
        for d in range(2):
            if offset[k, d] < 0 or offset[k, d] > 2 * pad:
                raise ValueError("params.offset holds a value outside [0, 2 * pad]")


@njit(inline="always", cache=True)
def _source_cols(cols, k, offset, flip, pad, w, reflect):
    """cols[j] = source column of output column j of sample k (crop, then flip), -1 outside a zero pad."""
    for j in range(w):
        jj = w - 1 - j if flip[k] else j
        cols[j] = _source_index(jj + offset[k, 1] - pad, w, reflect)


@njit(inline="always", cache=True)
def _pix_row(row, x, base, r, cols, sh, sw, sc, ch, scale, bias, cut0, cut1):
    """row[j * C + c] = pix(k) for one output row: the normalised source pixel (product and sum each
    rounded to fp32, as the reference), bias where the zero pad is (pixel value 0), 0.0 in [cut0, cut1)."""
    w = len(cols)
    if r < 0:  # the whole row lies in the zero pad
        for j in range(w):
            for c in range(ch):
                row[j * ch + c] = bias[c]
    else:
        src = base + r * sh
        for j in range(w):
            col = cols[j]
            o = j * ch
            if col < 0:
                for c in range(ch):
                    row[o + c] = bias[c]
            else:
                s = src + col * sw
                for c in range(ch):
                    row[o + c] = np.float32(x[s + c * sc]) * scale[c] + bias[c]
    for k in range(cut0 * ch, cut1 * ch):
        row[k] = np.float32(0.0)


@njit(parallel=True, cache=True)
def _augment(x, sn, sh, sw, sc, n_batch, h, w, ch, labels, offset, flip, cutout, mix_index, mix_lam, cutmix,
             scale, bias, pad, reflect, kind, out, y_b, lam_out):
    """x: the flat storage of the images (strides sn, sh, sw, sc); out: the flat NHWC output, float32
    when kind == OUT_F32, else the uint16 bit patterns of bf16/fp16."""
    _check(n_batch, offset, mix_index, pad)
    hw = np.float32(h * w)
    one = np.float32(1.0)
    row_len = w * ch
    for n in prange(n_batch):
        m = mix_index[n]
        lam = mix_lam[n]
        one_minus_lam = one - lam
        box_h = cutmix[n, 2] - cutmix[n, 0]
        box_w = cutmix[n, 3] - cutmix[n, 1]
        has_box = box_h > 0 and box_w > 0
        area = np.float32(max(box_h, 0) * max(box_w, 0))
        y_b[n] = labels[m]
        lam_out[n] = lam * (one - area / hw)
        # lam == 1 with no cutmix box is exactly pix(n): the partner is skipped
        mixing = lam != one or has_box
        own = np.empty(row_len, np.float32)
        other = np.empty(row_len, np.float32)
        cols_n = np.empty(w, np.int64)
        cols_m = np.empty(w, np.int64)
        _source_cols(cols_n, n, offset, flip, pad, w, reflect)
        if mixing:
            _source_cols(cols_m, m, offset, flip, pad, w, reflect)
        for i in range(h):
            r = _source_index(i + offset[n, 0] - pad, h, reflect)
            inside = i >= cutout[n, 0] and i < cutout[n, 2]
            c0 = min(max(cutout[n, 1], 0), w) if inside else 0
            c1 = max(min(cutout[n, 3], w), c0) if inside else 0
            _pix_row(own, x, n * sn, r, cols_n, sh, sw, sc, ch, scale, bias, c0, c1)
            if mixing:
                r = _source_index(i + offset[m, 0] - pad, h, reflect)
                inside = i >= cutout[m, 0] and i < cutout[m, 2]
                c0 = min(max(cutout[m, 1], 0), w) if inside else 0
                c1 = max(min(cutout[m, 3], w), c0) if inside else 0
                _pix_row(other, x, m * sn, r, cols_m, sh, sw, sc, ch, scale, bias, c0, c1)
                for k in range(row_len):  # each product rounded to fp32 before the sum (no FMA)
                    own[k] = own[k] * lam + other[k] * one_minus_lam
                if has_box and i >= cutmix[n, 0] and i < cutmix[n, 2]:  # cutmix: the partner's pixels
                    b0 = min(max(cutmix[n, 1], 0), w)
                    b1 = max(min(cutmix[n, 3], w), b0)
                    for k in range(b0 * ch, b1 * ch):
                        own[k] = other[k]
            dst = (n * h + i) * row_len
            if kind == OUT_F32:
                for k in range(row_len):
                    out[dst + k] = own[k]
            elif kind == OUT_BF16:
                for k in range(row_len):
                    out[dst + k] = _to_bf16(own[k])
            else:
                for k in range(row_len):
                    out[dst + k] = _to_f16(own[k])


def augment_into(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad: int,
                 reflect: bool, kind: int, out, y_b, lam_out) -> None:
    """Run the fused op. `x` is a uint8 (N, H, W, C) tensor of any strides; `out` the flat NHWC numpy
    output (float32, or uint16 bits for kind OUT_BF16 / OUT_F16); the rest numpy arrays (shapes and
    dtypes already validated by the caller)."""
    n, h, w, c = x.shape
    strides = x.stride()
    span = 1 + sum((size - 1) * st for size, st in zip(x.shape, strides)) if x.numel() else 0
    flat = x.as_strided((span,), (1,)).numpy()  # the storage the images occupy, no copy
    _augment(flat, strides[0], strides[1], strides[2], strides[3], n, h, w, c, labels, offset, flip, cutout,
             mix_index, mix_lam, cutmix, scale, bias, np.int64(pad), bool(reflect), np.int64(kind), out, y_b,
             lam_out)
