// Crop + antialiased bilinear resize + horizontal flip of one RGB uint8 image into an S x S x 3 output:
// the arithmetic written once, for the CUDA kernel (crop_resize_cuda.cu), its host emulation
// (crop_resize_ops.cpp) and the CPU JPEG decoder, so all three give the same bytes.
// Pure C++ (no torch, no CUDA headers): FT_CR_HD is `__host__ __device__` under nvcc, empty otherwise.
//
// THE RULE (the Python reference is torchvision resized_crop on float32, antialias=True, which this
// follows operation by operation for integer boxes; the contract is +-1 level against it):
//
//   Box (y0, x0, bh, bw): floats in the image's pixel coordinates (pixel k covers [k, k + 1)); bh, bw > 0.
//   Each axis separately (rows: start y0, length bh, image size h; columns likewise), output index i:
//     scale    = fl(length / S)                           (float division)
//     support  = max(1, scale)                            (triangle filter half-width, source pixels)
//     invscale = fl(1 / scale) if scale >= 1 else 1       (1/scale rounded once from double, as torch)
//     origin   = floor(start), frac = start - origin      (frac = 0 for integer boxes)
//     centre   = frac + fl(scale * (i + 0.5))             relative to origin; (i + 0.5) exact
//     valid    = [lo, hi) = [max(0, floor(start)), min(size, ceil(fl(start + length)))): the box's pixels
//                clamped to the image (taps never read outside the box: as torch, which resizes the crop)
//     taps     = k in [max(floor(fl(centre - support) + 0.5), lo - origin),
//                      min(floor(fl(centre + support) + 0.5), hi - origin))   (+0.5 added exactly)
//     raw(k)   = max(0, fl(1 - |fl((fl(k - centre) + 0.5) * invscale)|))        (the triangle filter)
//     w(k)     = fl(raw(k) / total), total = sum of raw(k) in ascending k, in float
//                (no tap left, for an output pixel beyond the image's edge when the box reaches outside
//                it: the nearest valid pixel, weight 1; total = 0: every tap weighs fl(1 / count))
//   Separable, horizontal pass first: for every source row r of the vertical taps
//     h(r, ox, c) = sum over horizontal taps k, ascending, of fl(w_x(k) * src(r, origin_x + k, c))
//     v(oy, ox, c) = sum over vertical taps k, ascending, of fl(w_y(k) * h(origin_y + k, ox, c))
//   every product and sum rounded to float on its own (no fused multiply-add), sums started with the
//   first product (identical to starting from 0.0f).
//   Output: out(oy, ox', c) = uint8(round_half_to_even(clamp(v, 0, 255))), ox' = S - 1 - ox when flipped
//   (the flip mirrors the output column), else ox. (Rounding is done with floor and an exact compare,
//   not the FPU's rounding mode, so it cannot depend on the host's fesetround.)
//
// Compile the host side with -ffp-contract=off (g++ fuses a * b + c into an FMA under -march=native
// otherwise, and the bytes would then differ from the GPU's); no -ffast-math. On the device the
// explicitly rounded intrinsics are used, so nvcc's --fmad cannot fuse them.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FT_CR_HD __host__ __device__
#else
#define FT_CR_HD
#endif

namespace fasttrain {
namespace crop {

// ---------------------------------------------------------------- single rounded float/double operations
FT_CR_HD inline float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FT_CR_HD inline float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

FT_CR_HD inline float fsub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

FT_CR_HD inline float fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FT_CR_HD inline double dmul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FT_CR_HD inline double dadd(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// floor(x + 0.5) for a float x, the +0.5 exact (in double), as torch's int64 cast after its clamp.
FT_CR_HD inline int32_t floor_half_up(float x) {
  return static_cast<int32_t>(floor(dadd(static_cast<double>(x), 0.5)));
}

// ---------------------------------------------------------------- one axis
// The mapping of one output axis onto the source: what make_axis computes once per image and axis.
struct Axis {
  float scale;     // box length / S
  float support;   // max(1, scale)
  float invscale;  // 1 / scale when shrinking, else 1
  float frac;      // start - origin
  int32_t origin;  // floor(start): tap k reads source index origin + k
  int32_t lo, hi;  // valid taps, relative to origin: [lo, hi)
};

FT_CR_HD inline Axis make_axis(float start, float length, int32_t size, int32_t out_size) {
  Axis a;
  a.scale = fdiv(length, static_cast<float>(out_size));
  a.support = a.scale >= 1.f ? a.scale : 1.f;
  a.invscale = a.scale >= 1.f ? static_cast<float>(1.0 / static_cast<double>(a.scale)) : 1.f;
  const float fo = floorf(start);
  a.origin = static_cast<int32_t>(fo);
  a.frac = fsub(start, fo);
  const int32_t end = static_cast<int32_t>(ceilf(fadd(start, length)));
  const int32_t lo = a.origin > 0 ? a.origin : 0;
  const int32_t hi = end < size ? end : size;
  a.lo = lo - a.origin;
  a.hi = hi - a.origin;
  return a;
}

// True when the box covers at least one image pixel (callers check this before resizing).
FT_CR_HD inline bool axis_valid(const Axis& a) { return a.hi > a.lo; }

// The taps of output index i: source indices origin + first .. origin + first + count - 1, with the
// normaliser of their raw weights. The weight of tap k (0 <= k < count) is weight(a, t, k).
struct Taps {
  int32_t first, count;
  float centre, total;
};

FT_CR_HD inline float raw_weight(const Axis& a, float centre, int32_t rel) {
  const float d = fsub(static_cast<float>(rel), centre);
  const float x = static_cast<float>(dmul(dadd(static_cast<double>(d), 0.5), static_cast<double>(a.invscale)));
  const float ax = x < 0.f ? -x : x;
  return ax < 1.f ? fsub(1.f, ax) : 0.f;
}

FT_CR_HD inline Taps taps(const Axis& a, int32_t i) {
  Taps t;
  t.centre = fadd(a.frac, fmul(a.scale, static_cast<float>(i) + 0.5f));
  int32_t first = floor_half_up(fsub(t.centre, a.support));
  int32_t last = floor_half_up(fadd(t.centre, a.support));  // exclusive
  first = first > a.lo ? first : a.lo;
  last = last < a.hi ? last : a.hi;
  if (last <= first) {  // the output pixel lies beyond the image (a box reaching outside it): edge pixel
    first = first >= a.hi ? a.hi - 1 : a.lo;
    last = first + 1;
  }
  t.first = first;
  t.count = last - first;
  float total = 0.f;
  for (int32_t k = 0; k < t.count; ++k) total = fadd(total, raw_weight(a, t.centre, first + k));
  t.total = total;
  return t;
}

FT_CR_HD inline float weight(const Axis& a, const Taps& t, int32_t k) {
  if (t.total == 0.f) return fdiv(1.f, static_cast<float>(t.count));  // no tap within the support: mean
  return fdiv(raw_weight(a, t.centre, t.first + k), t.total);
}

// An upper bound of Taps::count for every i (a buffer size for callers that cache weights).
FT_CR_HD inline int32_t max_taps(const Axis& a) {
  return static_cast<int32_t>(ceilf(a.support)) * 2 + 1;
}

// ---------------------------------------------------------------- output
FT_CR_HD inline uint8_t to_uint8(float v) {
  const float c = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);  // NaN cannot occur: weights and pixels are finite
  const float f = floorf(c);
  const float d = fsub(c, f);  // exact
  const int32_t n = static_cast<int32_t>(f);
  return static_cast<uint8_t>(d > 0.5f || (d == 0.5f && (n & 1)) ? n + 1 : n);  // half to even, as torch.round
}

// The resized column that output column ox shows.
FT_CR_HD inline int32_t source_column(int32_t ox, int32_t out_size, bool flip) {
  return flip ? out_size - 1 - ox : ox;
}

// ---------------------------------------------------------------- one image, any layout
// A uint8 RGB image with element strides: HWC interleaved (sc = 1, sx = 3, sy = 3 w) or CHW planar
// (sc = h w, sy = w, sx = 1), as torchvision's decoders return it.
struct Image {
  const uint8_t* data;
  int32_t h, w;
  int64_t sy, sx, sc;
};

// Output pixel (oy, ox) of the resized crop (before the flip), all 3 channels, computed directly: the
// horizontal pass of each vertical tap row, then the vertical sum, in the order of THE RULE above.
// This is what one CUDA thread does; a separable host implementation gives the same floats.
// The column weights are computed once (up to kCachedTaps of them; beyond that, recomputed per row:
// the same values either way).
constexpr int32_t kCachedTaps = 16;

FT_CR_HD inline void resize_pixel(const Image& im, const Axis& ay, const Axis& ax, int32_t oy, int32_t ox,
                                  float out[3]) {
  const Taps ty = taps(ay, oy);
  const Taps tx = taps(ax, ox);
  float wxs[kCachedTaps];
  const bool cached = tx.count <= kCachedTaps;
  if (cached) {
    for (int32_t kx = 0; kx < tx.count; ++kx) wxs[kx] = weight(ax, tx, kx);
  }
  float acc[3] = {0.f, 0.f, 0.f};
  for (int32_t ky = 0; ky < ty.count; ++ky) {
    const float wy = weight(ay, ty, ky);
    const uint8_t* row = im.data + static_cast<int64_t>(ay.origin + ty.first + ky) * im.sy +
                         static_cast<int64_t>(ax.origin + tx.first) * im.sx;
    float hsum[3] = {0.f, 0.f, 0.f};
    for (int32_t kx = 0; kx < tx.count; ++kx) {
      const float wx = cached ? wxs[kx] : weight(ax, tx, kx);
      const uint8_t* px = row + static_cast<int64_t>(kx) * im.sx;
      for (int c = 0; c < 3; ++c) hsum[c] = fadd(hsum[c], fmul(wx, static_cast<float>(px[c * im.sc])));
    }
    for (int c = 0; c < 3; ++c) acc[c] = fadd(acc[c], fmul(wy, hsum[c]));
  }
  for (int c = 0; c < 3; ++c) out[c] = acc[c];
}

}  // namespace crop
}  // namespace fasttrain

#ifndef __CUDACC__
// ---------------------------------------------------------------- host only: the whole image, separable
#include <vector>

namespace fasttrain {
namespace crop {

// The resized crop of `im` into dst (S x S x 3, HWC, row stride 3 S), flipped when `flip`: the separable
// host implementation (horizontal pass into a float buffer of the needed source rows, then vertical),
// bit for bit the same as resize_pixel per output pixel. Returns false (dst untouched) when the box
// covers no pixel of the image. `scratch` is reused between calls to avoid allocations.
inline bool crop_resize_image(const Image& im, float y0, float x0, float bh, float bw, bool flip, int32_t S,
                              uint8_t* dst, std::vector<float>& scratch) {
  const Axis ay = make_axis(y0, bh, im.h, S);
  const Axis ax = make_axis(x0, bw, im.w, S);
  if (!axis_valid(ay) || !axis_valid(ax) || !(bh > 0.f) || !(bw > 0.f)) return false;
  // Column taps and weights, computed once per output column.
  std::vector<Taps> tx(static_cast<size_t>(S));
  const int32_t mt = max_taps(ax);
  std::vector<float> wx(static_cast<size_t>(S) * mt);
  for (int32_t ox = 0; ox < S; ++ox) {
    tx[ox] = taps(ax, ox);
    for (int32_t k = 0; k < tx[ox].count; ++k) wx[ox * mt + k] = weight(ax, tx[ox], k);
  }
  // Horizontal pass over the source rows any output row uses: [ay.lo, ay.hi) relative to ay.origin.
  const int32_t rows = ay.hi - ay.lo;
  scratch.resize(static_cast<size_t>(rows) * S * 3);
  for (int32_t r = 0; r < rows; ++r) {
    const uint8_t* row = im.data + static_cast<int64_t>(ay.origin + ay.lo + r) * im.sy;
    float* hrow = scratch.data() + static_cast<size_t>(r) * S * 3;
    for (int32_t ox = 0; ox < S; ++ox) {
      const uint8_t* p0 = row + static_cast<int64_t>(ax.origin + tx[ox].first) * im.sx;
      float h[3] = {0.f, 0.f, 0.f};
      for (int32_t k = 0; k < tx[ox].count; ++k) {
        const uint8_t* px = p0 + static_cast<int64_t>(k) * im.sx;
        for (int c = 0; c < 3; ++c) h[c] = fadd(h[c], fmul(wx[ox * mt + k], static_cast<float>(px[c * im.sc])));
      }
      for (int c = 0; c < 3; ++c) hrow[ox * 3 + c] = h[c];
    }
  }
  // Vertical pass.
  for (int32_t oy = 0; oy < S; ++oy) {
    const Taps ty = taps(ay, oy);
    uint8_t* drow = dst + static_cast<size_t>(oy) * S * 3;
    for (int32_t ox = 0; ox < S; ++ox) {
      float v[3] = {0.f, 0.f, 0.f};
      for (int32_t k = 0; k < ty.count; ++k) {
        const float wy = weight(ay, ty, k);
        const float* h = scratch.data() + (static_cast<size_t>(ty.first + k - ay.lo) * S + ox) * 3;
        for (int c = 0; c < 3; ++c) v[c] = fadd(v[c], fmul(wy, h[c]));
      }
      uint8_t* o = drow + static_cast<size_t>(source_column(ox, S, flip)) * 3;
      for (int c = 0; c < 3; ++c) o[c] = to_uint8(v[c]);
    }
  }
  return true;
}

}  // namespace crop
}  // namespace fasttrain
#endif
