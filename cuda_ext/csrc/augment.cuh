// The fused augmentation algorithm, written once for the CUDA kernel (augment_cuda.cu) and its
// host emulation (augment_emulate.cu), which runs the same block/thread code on the CPU so the
// kernel's logic is tested on machines without a GPU.
//
// Contract: fasttrain/augment/reference.py (module docstring) and docs/augment_op.md. In short, per
// output element (n, i, j, c) of an NHWC-dense buffer:
//   pix(k) = 0 in cutout[k], else normalise(x[k, src_k(i, j), c]) (bias[c] outside a zero pad)
//   out    = pix(m) inside cutmix[n], else pix(n) * lam + pix(m) * (1 - lam), m = mix_index[n]
// in fp32 with every product and sum rounded separately (no FMA), then one round-to-nearest-even cast.
//
// Work split: a block of kThreads threads handles kThreads consecutive pixels of one sample. Phase 1:
// thread t computes the C channels of its pixel into shared memory. Phase 2: the block's pixels are
// one contiguous run of the output, copied out with 16-byte stores when aligned (element-wise when
// not), so global writes are fully coalesced whatever C and the dtype are.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define FT_HD __host__ __device__ __forceinline__

namespace fasttrain {

constexpr int kThreads = 256;      // threads per block = pixels per block
constexpr int64_t kMaxChannels = 16;  // bounds the shared staging buffer (256 * 16 * 4 B = 16 KiB)

struct Args {
  const uint8_t* x;  // images, (N, H, W, C), any strides
  int64_t sn, sh, sw, sc;  // strides of x, in elements
  const int64_t* labels;  // (N,)
  const int32_t* offset;  // (N, 2): dy, dx in [0, 2 pad]
  const bool* flip;  // (N,)
  const int32_t* cutout;  // (N, 4): y0, x0, y1, x1 (half-open, output coordinates)
  const int64_t* mix_index;  // (N,)
  const float* mix_lam;  // (N,)
  const int32_t* cutmix;  // (N, 4)
  const float* scale;  // (C,)
  const float* bias;  // (C,)
  int64_t n, h, w, c;
  int64_t pad;
  bool reflect;
  void* out;  // (N, H, W, C) dense, element type T
  int64_t* y_b;  // (N,)
  float* lam;  // (N,)
};

// fp32 arithmetic rounded after every operation: the device intrinsics are never contracted into an
// FMA; on the host, volatile keeps the compiler from fusing (the emulation is a test path).
FT_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  volatile float r = a * b;
  return r;
#endif
}

FT_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  volatile float r = a + b;
  return r;
#endif
}

FT_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  volatile float r = a - b;
  return r;
#endif
}

FT_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  volatile float r = a / b;
  return r;
#endif
}

template <typename T>
FT_HD T from_float(float v);
template <>
FT_HD float from_float<float>(float v) {
  return v;
}
template <>
FT_HD __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
FT_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Source coordinate of padded coordinate k (torch's reflect: no edge repeat; zero: inside = false).
// Valid offsets keep k within one reflection; the final clamp only keeps out-of-contract offsets
// from reading outside the image.
FT_HD int64_t source_index(int64_t k, int64_t size, bool reflect, bool& inside) {
  inside = true;
  if (reflect) {
    if (k < 0) k = -k;
    if (k >= size) k = 2 * size - 2 - k;
  } else if (k < 0 || k >= size) {
    inside = false;
  }
  return k < 0 ? 0 : (k >= size ? size - 1 : k);
}

// Where output pixel (i, j) of sample k reads from, and whether the cutout blanks it.
struct Tap {
  const uint8_t* px;
  bool inside;  // false: outside a zero pad (pixel value 0)
  bool cut;
};

FT_HD Tap tap(const Args& a, int64_t k, int64_t i, int64_t j) {
  const int32_t* off = a.offset + 2 * k;
  const int32_t* box = a.cutout + 4 * k;
  bool rin, cin;
  const int64_t r = source_index(i + off[0] - a.pad, a.h, a.reflect, rin);
  const int64_t jj = a.flip[k] ? a.w - 1 - j : j;  // crop, then flip
  const int64_t col = source_index(jj + off[1] - a.pad, a.w, a.reflect, cin);
  Tap t;
  t.px = a.x + k * a.sn + r * a.sh + col * a.sw;
  t.inside = rin && cin;
  t.cut = i >= box[0] && i < box[2] && j >= box[1] && j < box[3];
  return t;
}

// pix(k) at channel ch: cutout -> 0; zero pad -> bias (= normalise(0)); else v * scale + bias.
FT_HD float pix(const Args& a, const Tap& t, int64_t ch) {
  if (t.cut) return 0.f;
  if (!t.inside) return a.bias[ch];
  return add_rn(mul_rn(static_cast<float>(t.px[ch * a.sc]), a.scale[ch]), a.bias[ch]);
}

FT_HD bool box_nonempty(const int32_t* box) {
  return box[2] > box[0] && box[3] > box[1];
}

// Phase 1 for pixel q of sample n: its C output values into dst[0..C).
template <typename T>
FT_HD void compute_pixel(const Args& a, int64_t n, int64_t q, T* dst) {
  const int64_t i = q / a.w;
  const int64_t j = q - i * a.w;
  const Tap tn = tap(a, n, i, j);
  const float lam = a.mix_lam[n];
  const int32_t* cm = a.cutmix + 4 * n;
  // lam == 1 with no cutmix box is exactly pix(n): skip reading the partner
  if (lam == 1.f && !box_nonempty(cm)) {
    for (int64_t ch = 0; ch < a.c; ++ch) dst[ch] = from_float<T>(pix(a, tn, ch));
    return;
  }
  int64_t m = a.mix_index[n];
  m = m < 0 ? 0 : (m >= a.n ? a.n - 1 : m);  // memory safety only: valid indices lie in [0, N)
  const Tap tm = tap(a, m, i, j);
  const bool in_box = i >= cm[0] && i < cm[2] && j >= cm[1] && j < cm[3];
  const float one_minus_lam = sub_rn(1.f, lam);
  for (int64_t ch = 0; ch < a.c; ++ch) {
    const float vb = pix(a, tm, ch);
    const float v = in_box ? vb : add_rn(mul_rn(pix(a, tn, ch), lam), mul_rn(vb, one_minus_lam));
    dst[ch] = from_float<T>(v);
  }
}

// Targets of sample n: y_b = labels[m], lam = mix_lam * (1 - cutmix area / (H W)).
FT_HD void compute_targets(const Args& a, int64_t n) {
  int64_t m = a.mix_index[n];
  m = m < 0 ? 0 : (m >= a.n ? a.n - 1 : m);
  const int32_t* cm = a.cutmix + 4 * n;
  const int32_t bh = cm[2] - cm[0] > 0 ? cm[2] - cm[0] : 0;
  const int32_t bw = cm[3] - cm[1] > 0 ? cm[3] - cm[1] : 0;
  const float area = mul_rn(static_cast<float>(bh), static_cast<float>(bw));
  a.y_b[n] = a.labels[m];
  a.lam[n] = mul_rn(a.mix_lam[n], sub_rn(1.f, div_rn(area, static_cast<float>(a.h * a.w))));
}

// Phase 1 of block bx of sample n, thread t: pixel bx * kThreads + t into stage[t * C ..].
template <typename T>
FT_HD void block_compute(const Args& a, int64_t n, int64_t bx, int t, T* stage) {
  const int64_t q = bx * kThreads + t;
  if (q < a.h * a.w) compute_pixel<T>(a, n, q, stage + t * a.c);
  if (bx == 0 && t == 0) compute_targets(a, n);
}

FT_HD void copy16(char* dst, const char* src) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
  std::memcpy(dst, src, 16);
#endif
}

// Phase 2: the block's staged pixels are one contiguous run of the output; thread t of nthreads
// copies its share. 16-byte stores when the run starts 16-byte aligned, element-wise otherwise.
template <typename T>
FT_HD void block_store(const Args& a, int64_t n, int64_t bx, int t, int nthreads, const T* stage) {
  const int64_t hw = a.h * a.w;
  const int64_t q0 = bx * kThreads;
  const int64_t npx = hw - q0 < kThreads ? hw - q0 : kThreads;
  const int64_t count = npx * a.c;
  T* dst = static_cast<T*>(a.out) + (n * hw + q0) * a.c;
  int64_t first_scalar = 0;
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    const int64_t nvec = count * static_cast<int64_t>(sizeof(T)) / 16;
    char* d = reinterpret_cast<char*>(dst);
    const char* s = reinterpret_cast<const char*>(stage);
    for (int64_t v = t; v < nvec; v += nthreads) copy16(d + 16 * v, s + 16 * v);
    first_scalar = nvec * 16 / static_cast<int64_t>(sizeof(T));
  }
  for (int64_t e = first_scalar + t; e < count; e += nthreads) dst[e] = stage[e];
}

inline int64_t blocks_per_sample(int64_t h, int64_t w) {
  return (h * w + kThreads - 1) / kThreads;
}

}  // namespace fasttrain
