// CUDA implementation of fasttrain::augment / fasttrain::augment_out. The schemas are declared once,
// in Python (fasttrain/augment/fused.py), beside the numba CPU implementation and the fake (meta)
// implementations used by torch.compile; this file only registers the CUDA kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "augment.cuh"
#include "checks.h"

namespace fasttrain {

// grid = (blocks per sample, min(N, 65535)); samples beyond gridDim.y are covered by striding.
template <typename T, int kC>
__global__ void __launch_bounds__(kThreads) augment_kernel(Args a) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* stage = reinterpret_cast<T*>(smem);
  const int t = static_cast<int>(threadIdx.x);
  for (int64_t n = blockIdx.y; n < a.n; n += gridDim.y) {
    block_compute<T, kC>(a, n, static_cast<int32_t>(blockIdx.x), t, stage);
    __syncthreads();
    block_store<T>(a, n, static_cast<int32_t>(blockIdx.x), t, kThreads, stage);
    __syncthreads();  // the stage is reused for the next sample
  }
}

template <typename T>
void launch(const Args& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(blocks_per_sample(a.h, a.w)),
                  static_cast<unsigned>(std::min<int64_t>(a.n, 65535)));
  const size_t smem = static_cast<size_t>(kBlockPixels) * a.c * sizeof(T);
  dispatch_channels(a.c, [&](auto kc) { augment_kernel<T, decltype(kc)::value><<<grid, kThreads, smem, stream>>>(a); });
}

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
  switch (out.scalar_type()) {
    case at::kFloat:
      launch<float>(a, stream);
      break;
    case at::kHalf:
      launch<__half>(a, stream);
      break;
    case at::kBFloat16:
      launch<__nv_bfloat16>(a, stream);
      break;
    default:
      TORCH_CHECK(false, "fasttrain::augment: unsupported output dtype ", out.scalar_type());
  }
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

}  // namespace fasttrain

TORCH_LIBRARY_IMPL(fasttrain, CUDA, m) {
  m.impl("augment", &fasttrain::augment_cuda);
  m.impl("augment_out", &fasttrain::augment_out_cuda);
}
