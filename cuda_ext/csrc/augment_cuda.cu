// CUDA kernel of fasttrain::augment / fasttrain::augment_out: the block code of augment.cuh on the GPU.
// Kernel and launcher only (no torch header): the op's checks and registration are in augment_ops.cpp.
#include <algorithm>

#include "augment.cuh"
#include "launch.h"

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

void launch_augment(const Args& a, OutType type, cudaStream_t stream) {
  switch (type) {
    case OutType::kFloat:
      launch<float>(a, stream);
      break;
    case OutType::kHalf:
      launch<__half>(a, stream);
      break;
    case OutType::kBFloat16:
      launch<__nv_bfloat16>(a, stream);
      break;
  }
}

}  // namespace fasttrain
