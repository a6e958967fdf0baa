// The torch side of fasttrain::augment / augment_out (schemas declared in Python, fasttrain/augment/fused.py):
// argument checks (messages name the argument and what was expected, like the Python side), the CUDA
// kernel's registration (the kernel itself is in augment_cuda.cu, behind launch.h) and the host emulation:
// augment.cuh's block/thread code run block by block, thread by thread on the CPU, registered as the CPU
// kernel of the test-only op fasttrain::_augment_out_emulated (same arguments as augment_out), so the
// kernel's logic is tested on machines without a GPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "augment.cuh"
#include "launch.h"

namespace fasttrain {

inline void check_param(const at::Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape,
                        const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == dtype, "fasttrain::augment: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "fasttrain::augment: ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "fasttrain::augment: ", name, " is on ", t.device(), " but images are on ",
              x.device());
  TORCH_CHECK(t.is_contiguous(), "fasttrain::augment: ", name, " must be contiguous");
}

// Validates every argument and packs the raw pointers for the kernel.
inline Args make_args(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& offset, const at::Tensor& flip,
                      const at::Tensor& cutout, const at::Tensor& mix_index, const at::Tensor& mix_lam,
                      const at::Tensor& cutmix, const at::Tensor& scale, const at::Tensor& bias, int64_t pad,
                      bool reflect, const at::Tensor& out, const at::Tensor& y_b, const at::Tensor& lam) {
  TORCH_CHECK(x.dim() == 4, "fasttrain::augment: images must be 4-d uint8 (N, H, W, C); got ", x.dim(),
              "-d shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kByte, "fasttrain::augment: images must be uint8 (N, H, W, C); got ",
              x.scalar_type());
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  TORCH_CHECK(c >= 1 && c <= kMaxChannels, "fasttrain::augment: images must have 1..", kMaxChannels,
              " channels (N, H, W, C); got C = ", c);
  TORCH_CHECK(pad >= 0 && pad < (int64_t{1} << 30), "fasttrain::augment: pad must be >= 0 (and sane), got ", pad);
  TORCH_CHECK(!reflect || n * h * w == 0 || pad < std::min(h, w), "fasttrain::augment: reflect pad ", pad,
              " must be smaller than the image (", h, "x", w, ")");
  check_param(labels, "labels", at::kLong, {n}, x);
  check_param(offset, "params.offset", at::kInt, {n, 2}, x);
  check_param(flip, "params.flip", at::kBool, {n}, x);
  check_param(cutout, "params.cutout", at::kInt, {n, 4}, x);
  check_param(mix_index, "params.mix_index", at::kLong, {n}, x);
  check_param(mix_lam, "params.mix_lam", at::kFloat, {n}, x);
  check_param(cutmix, "params.cutmix", at::kInt, {n, 4}, x);
  check_param(scale, "scale", at::kFloat, {c}, x);
  check_param(bias, "bias", at::kFloat, {c}, x);
  check_param(y_b, "y_b", at::kLong, {n}, x);
  check_param(lam, "lam", at::kFloat, {n}, x);
  const auto dt = out.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "fasttrain::augment: out must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(out.sizes() == at::IntArrayRef({n, c, h, w}), "fasttrain::augment: out must have shape (N, C, H, W) = ",
              at::IntArrayRef({n, c, h, w}), ", got ", out.sizes());
  TORCH_CHECK(out.device() == x.device(), "fasttrain::augment: out is on ", out.device(), " but images are on ",
              x.device());
  TORCH_CHECK(out.permute({0, 2, 3, 1}).is_contiguous(),
              "fasttrain::augment: out must be channels_last (NHWC-dense storage), got strides ", out.strides());

  // 32-bit index math inside an image (see augment.cuh): every in-image offset must fit.
  constexpr int64_t kMax32 = (int64_t{1} << 31) - 1;
  TORCH_CHECK(h * w <= kMax32 / std::max<int64_t>(c, 1) &&
                  (h - 1) * x.stride(1) + (w - 1) * x.stride(2) + (c - 1) * x.stride(3) <= kMax32,
              "fasttrain::augment: one image must span fewer than 2^31 elements, got (H, W, C) = (", h, ", ", w, ", ",
              c, ") with strides ", x.strides());

  Args a;
  a.x = x.data_ptr<uint8_t>();
  a.sn = x.stride(0);
  a.sh = static_cast<int32_t>(x.stride(1));
  a.sw = static_cast<int32_t>(x.stride(2));
  a.sc = static_cast<int32_t>(x.stride(3));
  a.labels = labels.data_ptr<int64_t>();
  a.offset = offset.data_ptr<int32_t>();
  a.flip = flip.data_ptr<bool>();
  a.cutout = cutout.data_ptr<int32_t>();
  a.mix_index = mix_index.data_ptr<int64_t>();
  a.mix_lam = mix_lam.data_ptr<float>();
  a.cutmix = cutmix.data_ptr<int32_t>();
  a.scale = scale.data_ptr<float>();
  a.bias = bias.data_ptr<float>();
  a.n = n;
  a.h = static_cast<int32_t>(h);
  a.w = static_cast<int32_t>(w);
  a.c = static_cast<int32_t>(c);
  a.hw = static_cast<int32_t>(h * w);
  a.w_div = make_fastdiv(static_cast<uint32_t>(std::max<int64_t>(w, 1)));
  a.pad = static_cast<int32_t>(pad);
  a.reflect = reflect;
  a.out = out.data_ptr();
  a.y_b = y_b.data_ptr<int64_t>();
  a.lam = lam.data_ptr<float>();
  return a;
}

// ------------------------------------------------------------------------------------------- CUDA
void augment_out_cuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& offset, const at::Tensor& flip,
                      const at::Tensor& cutout, const at::Tensor& mix_index, const at::Tensor& mix_lam,
                      const at::Tensor& cutmix, const at::Tensor& scale, const at::Tensor& bias, int64_t pad,
                      bool reflect, at::Tensor& out, at::Tensor& y_b, at::Tensor& lam) {
  TORCH_CHECK(x.is_cuda(), "fasttrain::augment (CUDA): images must be a CUDA tensor, got ", x.device());
  const Args a = make_args(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                           out, y_b, lam);
  if (a.n == 0 || a.h * a.w == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // make_args accepted only these three output types
  const OutType type = out.scalar_type() == at::kFloat  ? OutType::kFloat
                       : out.scalar_type() == at::kHalf ? OutType::kHalf
                                                        : OutType::kBFloat16;
  launch_augment(a, type, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> augment_cuda(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& offset, const at::Tensor& flip,
    const at::Tensor& cutout, const at::Tensor& mix_index, const at::Tensor& mix_lam, const at::Tensor& cutmix,
    const at::Tensor& scale, const at::Tensor& bias, int64_t pad, bool reflect, at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() == 4, "fasttrain::augment: images must be 4-d uint8 (N, H, W, C); got ", x.dim(),
              "-d shape ", x.sizes());
  at::Tensor out = at::empty({x.size(0), x.size(3), x.size(1), x.size(2)},
                             x.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor y_b = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor lam = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  augment_out_cuda(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect, out, y_b,
                   lam);
  return {out, y_b, lam};
}

// ------------------------------------------------------------------------------------- host emulation
template <typename T, int kC>
void emulate_blocks(const Args& a) {
  std::vector<T> stage(static_cast<size_t>(kBlockPixels * a.c));
  const int64_t blocks = blocks_per_sample(a.h, a.w);
  for (int64_t n = 0; n < a.n; ++n) {
    for (int32_t bx = 0; bx < blocks; ++bx) {
      for (int t = 0; t < kThreads; ++t) block_compute<T, kC>(a, n, bx, t, stage.data());
      // (__syncthreads())
      for (int t = 0; t < kThreads; ++t) block_store<T>(a, n, bx, t, kThreads, stage.data());
    }
  }
}

template <typename T>
void emulate(const Args& a) {
  dispatch_channels(a.c, [&](auto kc) { emulate_blocks<T, decltype(kc)::value>(a); });
}

void augment_out_emulated(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& offset,
                          const at::Tensor& flip, const at::Tensor& cutout, const at::Tensor& mix_index,
                          const at::Tensor& mix_lam, const at::Tensor& cutmix, const at::Tensor& scale,
                          const at::Tensor& bias, int64_t pad, bool reflect, at::Tensor& out, at::Tensor& y_b,
                          at::Tensor& lam) {
  const Args a = make_args(x, labels, offset, flip, cutout, mix_index, mix_lam, cutmix, scale, bias, pad, reflect,
                           out, y_b, lam);
  if (a.n == 0 || a.h * a.w == 0) return;
  switch (out.scalar_type()) {
    case at::kFloat:
      emulate<float>(a);
      break;
    case at::kHalf:
      emulate<__half>(a);
      break;
    default:  // make_args accepted only float32, float16 and bfloat16
      emulate<__nv_bfloat16>(a);
  }
}

}  // namespace fasttrain

TORCH_LIBRARY_IMPL(fasttrain, CUDA, m) {
  m.impl("augment", &fasttrain::augment_cuda);
  m.impl("augment_out", &fasttrain::augment_out_cuda);
}

TORCH_LIBRARY_FRAGMENT(fasttrain, m) {
  m.def(
      "_augment_out_emulated(Tensor x, Tensor labels, Tensor offset, Tensor flip, Tensor cutout, "
      "Tensor mix_index, Tensor mix_lam, Tensor cutmix, Tensor scale, Tensor bias, int pad, bool reflect, "
      "Tensor(a!) out, Tensor(b!) y_b, Tensor(c!) lam) -> ()");
}

TORCH_LIBRARY_IMPL(fasttrain, CPU, m) {
  m.impl("_augment_out_emulated", &fasttrain::augment_out_emulated);
}
