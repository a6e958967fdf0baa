// The fused augmentation algorithm, written once for the CUDA kernel (augment_cuda.cu) and its
// host emulation (augment_ops.cpp), which runs the same block/thread code on the CPU so the
// kernel's logic is tested on machines without a GPU.
//
// Contract: fasttrain/augment/reference.py (module docstring) and docs/augment_op.md. In short, per
// output element (n, i, j, c) of an NHWC-dense buffer:
//   pix(k) = 0 in cutout[k], else normalise(x[k, src_k(i, j), c]) (bias[c] outside a zero pad)
//   out    = pix(m) inside cutmix[n], else pix(n) * lam + pix(m) * (1 - lam), m = mix_index[n]
// in fp32 with every product and sum rounded separately (no FMA), then one round-to-nearest-even cast.
//
// Work split: a block of kThreads threads handles kBlockPixels consecutive pixels of one sample. Phase
// 1: each thread loads the sample's parameters once and computes the C channels of kPixelsPerThread
// pixels into shared memory. Phase 2: the block's pixels are one contiguous run of the output, copied
// out with 16-byte stores when aligned (element-wise when not), so global writes are fully coalesced
// whatever C and the dtype are. Index math within an image is 32-bit (checked on the host).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Under nvcc the block code is host + device; the host compiler (the emulation, augment_ops.cpp) sees plain
// inline C++ (cuda_fp16.h / cuda_bf16.h give it the host versions of the conversions).
#if defined(__CUDACC__)
#define FT_HD __host__ __device__ __forceinline__
#else
#define FT_HD inline
#endif

namespace fasttrain {

constexpr int kThreads = 256;  // threads per block
constexpr int kPixelsPerThread = 4;  // per-sample parameters are loaded once per thread for 4 pixels
constexpr int kBlockPixels = kThreads * kPixelsPerThread;  // 1024: one 32x32 image per block
constexpr int64_t kMaxChannels = 8;  // bounds the shared staging buffer: 1024 px * 8 ch * 4 B = 32 KiB

// q / d for 0 <= q < 2^31 with a multiply-high and a shift instead of an integer division (the
// method of PyTorch's IntDivider): per pixel the kernel divides by W, and a hardware-less 64-bit
// division would cost more than the memory traffic it serves.
struct FastDiv {
  uint32_t d, m, s;
};

inline FastDiv make_fastdiv(uint32_t d) {
  uint32_t s = 0;
  while (s < 32 && (uint64_t{1} << s) < d) ++s;
  const uint64_t m = ((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1;  // < 2^32 since 2^(s-1) < d
  return FastDiv{d, static_cast<uint32_t>(m), s};
}

FT_HD uint32_t fast_div(const FastDiv& f, uint32_t q) {
#ifdef __CUDA_ARCH__
  const uint32_t t = __umulhi(q, f.m);
  return (t + q) >> f.s;  // t <= q < 2^31: no overflow
#else
  const uint64_t t = (static_cast<uint64_t>(q) * f.m) >> 32;
  return static_cast<uint32_t>((t + q) >> f.s);
#endif
}

struct Args {
  const uint8_t* x;  // images, (N, H, W, C), any strides
  int64_t sn;  // sample stride of x, in elements
  int32_t sh, sw, sc;  // strides within one image (checked on the host to fit 32 bits)
  const int64_t* labels;  // (N,)
  const int32_t* offset;  // (N, 2): dy, dx in [0, 2 pad]
  const bool* flip;  // (N,)
  const int32_t* cutout;  // (N, 4): y0, x0, y1, x1 (half-open, output coordinates)
  const int64_t* mix_index;  // (N,)
  const float* mix_lam;  // (N,)
  const int32_t* cutmix;  // (N, 4)
  const float* scale;  // (C,)
  const float* bias;  // (C,)
  int64_t n;
  int32_t h, w, c, hw;
  FastDiv w_div;
  int32_t pad;
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
FT_HD int32_t source_index(int32_t k, int32_t size, bool reflect, bool& inside) {
  inside = true;
  if (reflect) {
    if (k < 0) k = -k;
    if (k >= size) k = 2 * size - 2 - k;
  } else if (k < 0 || k >= size) {
    inside = false;
  }
  return k < 0 ? 0 : (k >= size ? size - 1 : k);
}

FT_HD int64_t clamp_index(int64_t m, int64_t n) {
  return m < 0 ? 0 : (m >= n ? n - 1 : m);  // memory safety only: valid indices lie in [0, N)
}

// One sample's parameters, loaded once per thread and reused for its pixels.
struct View {
  const uint8_t* img;
  int32_t dy, dx;  // offset - pad
  bool flip;
  int32_t y0, x0, y1, x1;  // cutout box
};

FT_HD View load_view(const Args& a, int64_t k) {
  View v;
  v.img = a.x + k * a.sn;
  v.dy = a.offset[2 * k] - a.pad;
  v.dx = a.offset[2 * k + 1] - a.pad;
  v.flip = a.flip[k];
  v.y0 = a.cutout[4 * k];
  v.x0 = a.cutout[4 * k + 1];
  v.y1 = a.cutout[4 * k + 2];
  v.x1 = a.cutout[4 * k + 3];
  return v;
}

// Everything output sample n needs: its own view, the partner's, the blend weight, the cutmix box.
struct Job {
  View own, partner;
  bool mixing;  // false: lam == 1 and no cutmix box, which is exactly pix(n): the partner is skipped
  float lam, one_minus_lam;
  int32_t y0, x0, y1, x1;  // cutmix box
};

FT_HD Job load_job(const Args& a, int64_t n) {
  Job jb;
  jb.own = load_view(a, n);
  jb.lam = a.mix_lam[n];
  jb.one_minus_lam = sub_rn(1.f, jb.lam);
  jb.y0 = a.cutmix[4 * n];
  jb.x0 = a.cutmix[4 * n + 1];
  jb.y1 = a.cutmix[4 * n + 2];
  jb.x1 = a.cutmix[4 * n + 3];
  jb.mixing = jb.lam != 1.f || (jb.y1 > jb.y0 && jb.x1 > jb.x0);
  jb.partner = jb.mixing ? load_view(a, clamp_index(a.mix_index[n], a.n)) : jb.own;
  return jb;
}

// Where output pixel (i, j) of a sample reads from, and whether its cutout blanks it.
struct Tap {
  const uint8_t* px;
  bool inside;  // false: outside a zero pad (pixel value 0)
  bool cut;
};

FT_HD Tap tap(const Args& a, const View& v, int32_t i, int32_t j) {
  bool rin, cin;
  const int32_t r = source_index(i + v.dy, a.h, a.reflect, rin);
  const int32_t col = source_index((v.flip ? a.w - 1 - j : j) + v.dx, a.w, a.reflect, cin);  // crop, then flip
  Tap t;
  t.px = v.img + (r * a.sh + col * a.sw);
  t.inside = rin && cin;
  t.cut = i >= v.y0 && i < v.y1 && j >= v.x0 && j < v.x1;
  return t;
}

// scale and bias per channel. With the channel count known at compile time (kC > 0: the RGB case)
// they live in registers, loaded once per thread; otherwise (kC == 0) they are read from global memory.
template <int kC>
struct Norm {
  float scale[kC], bias[kC];
  FT_HD explicit Norm(const Args& a) {
#pragma unroll
    for (int ch = 0; ch < kC; ++ch) {
      scale[ch] = a.scale[ch];
      bias[ch] = a.bias[ch];
    }
  }
  FT_HD int32_t channels(const Args&) const { return kC; }
  FT_HD float s(const Args&, int32_t ch) const { return scale[ch]; }
  FT_HD float b(const Args&, int32_t ch) const { return bias[ch]; }
};

template <>
struct Norm<0> {
  FT_HD explicit Norm(const Args&) {}
  FT_HD int32_t channels(const Args& a) const { return a.c; }
  FT_HD float s(const Args& a, int32_t ch) const { return a.scale[ch]; }
  FT_HD float b(const Args& a, int32_t ch) const { return a.bias[ch]; }
};

// pix(k) at channel ch: cutout -> 0; zero pad -> bias (= normalise(0)); else v * scale + bias.
template <int kC>
FT_HD float pix(const Args& a, const Norm<kC>& nm, const Tap& t, int32_t ch) {
  if (t.cut) return 0.f;
  if (!t.inside) return nm.b(a, ch);
  return add_rn(mul_rn(static_cast<float>(t.px[ch * a.sc]), nm.s(a, ch)), nm.b(a, ch));
}

// Phase 1 for pixel q of the job's sample: its C output values into dst[0..C).
template <typename T, int kC>
FT_HD void compute_pixel(const Args& a, const Norm<kC>& nm, const Job& jb, int32_t q, T* dst) {
  const int32_t i = static_cast<int32_t>(fast_div(a.w_div, static_cast<uint32_t>(q)));
  const int32_t j = q - i * a.w;
  const int32_t nc = nm.channels(a);
  const Tap tn = tap(a, jb.own, i, j);
  if (!jb.mixing) {
#pragma unroll
    for (int32_t ch = 0; ch < nc; ++ch) dst[ch] = from_float<T>(pix(a, nm, tn, ch));
    return;
  }
  const Tap tm = tap(a, jb.partner, i, j);
  const bool in_box = i >= jb.y0 && i < jb.y1 && j >= jb.x0 && j < jb.x1;
#pragma unroll
  for (int32_t ch = 0; ch < nc; ++ch) {
    const float vb = pix(a, nm, tm, ch);
    const float v = in_box ? vb : add_rn(mul_rn(pix(a, nm, tn, ch), jb.lam), mul_rn(vb, jb.one_minus_lam));
    dst[ch] = from_float<T>(v);
  }
}

// Targets of sample n: y_b = labels[m], lam = mix_lam * (1 - cutmix area / (H W)).
FT_HD void compute_targets(const Args& a, int64_t n) {
  const int32_t* cm = a.cutmix + 4 * n;
  const int32_t bh = cm[2] - cm[0] > 0 ? cm[2] - cm[0] : 0;
  const int32_t bw = cm[3] - cm[1] > 0 ? cm[3] - cm[1] : 0;
  const float area = mul_rn(static_cast<float>(bh), static_cast<float>(bw));
  a.y_b[n] = a.labels[clamp_index(a.mix_index[n], a.n)];
  a.lam[n] = mul_rn(a.mix_lam[n], sub_rn(1.f, div_rn(area, static_cast<float>(a.hw))));
}

// Phase 1 of block bx of sample n, thread t: pixels bx * kBlockPixels + t + k * kThreads (consecutive
// threads on consecutive pixels, for coalesced reads) into stage[p * C ..], p the pixel in the block.
template <typename T, int kC>
FT_HD void block_compute(const Args& a, int64_t n, int32_t bx, int t, T* stage) {
  const Job jb = load_job(a, n);
  const Norm<kC> nm(a);
#pragma unroll
  for (int k = 0; k < kPixelsPerThread; ++k) {
    const int32_t p = t + k * kThreads;
    const int32_t q = bx * kBlockPixels + p;
    if (q < a.hw) compute_pixel<T, kC>(a, nm, jb, q, stage + p * a.c);
  }
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
FT_HD void block_store(const Args& a, int64_t n, int32_t bx, int t, int nthreads, const T* stage) {
  const int32_t q0 = bx * kBlockPixels;
  const int32_t npx = a.hw - q0 < kBlockPixels ? a.hw - q0 : kBlockPixels;
  const int32_t count = npx * a.c;
  T* dst = static_cast<T*>(a.out) + (n * a.hw + q0) * a.c;
  int32_t first_scalar = 0;
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    const int32_t nvec = count * static_cast<int32_t>(sizeof(T)) / 16;
    char* d = reinterpret_cast<char*>(dst);
    const char* s = reinterpret_cast<const char*>(stage);
    for (int32_t v = t; v < nvec; v += nthreads) copy16(d + 16 * v, s + 16 * v);
    first_scalar = nvec * 16 / static_cast<int32_t>(sizeof(T));
  }
  for (int32_t e = first_scalar + t; e < count; e += nthreads) dst[e] = stage[e];
}

// Calls f(std::integral_constant<int, kC>) with kC = 3 for RGB (compile-time channel loop), else 0.
template <typename F>
void dispatch_channels(int64_t c, F&& f) {
  if (c == 3) {
    f(std::integral_constant<int, 3>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

inline int64_t blocks_per_sample(int64_t h, int64_t w) {
  return (h * w + kBlockPixels - 1) / kBlockPixels;
}

}  // namespace fasttrain
