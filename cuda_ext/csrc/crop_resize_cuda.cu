// CUDA kernel of fasttrain::crop_resize (schema in cuda_ext/ops.py): a batch of decoded images of any sizes
// -> one (B, S, S, 3) uint8 batch, crop + antialiased bilinear resize + flip in one launch. The arithmetic
// is crop_resize.h's, the per-thread code crop_resize_kernel.h's. Kernel and launcher only (no torch
// header): the op's checks, image table and registration are in crop_resize_ops.cpp.
#include <algorithm>

#include "crop_resize_kernel.h"
#include "launch.h"

namespace fasttrain {
namespace crop {

__global__ void __launch_bounds__(kCropThreads)
    crop_resize_kernel(const Entry* __restrict__ entries, int64_t n, int32_t S, uint8_t* __restrict__ out) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kCropThreads + threadIdx.x;
  if (q >= static_cast<int64_t>(S) * S) return;
  const int64_t image_bytes = static_cast<int64_t>(S) * S * 3;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    crop_resize_thread(entries[i], S, static_cast<int32_t>(q), out + i * image_bytes);
  }
}

void launch_crop_resize(const Entry* table, int64_t n, int32_t size, uint8_t* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(crop_blocks_per_image(size)), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  crop_resize_kernel<<<grid, kCropThreads, 0, stream>>>(table, n, size, out);
}

}  // namespace crop
}  // namespace fasttrain
