// CUDA implementation of fasttrain::crop_resize (schema in cuda_ext/ops.py): a batch of decoded images of
// any sizes -> one (B, S, S, 3) uint8 batch, crop + antialiased bilinear resize + flip in one launch.
// The arithmetic is crop_resize.h's; the per-thread code crop_resize_kernel.h's.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "crop_resize_table.h"

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

at::Tensor crop_resize_cuda(at::TensorList images, const at::Tensor& boxes, const at::Tensor& flips, int64_t size) {
  const std::vector<Entry> entries = make_entries(images, boxes, flips, size);
  TORCH_CHECK(images[0].is_cuda(), "fasttrain::crop_resize (CUDA): images must be CUDA tensors, got ",
              images[0].device());
  const c10::cuda::CUDAGuard guard(images[0].device());
  at::Tensor out = empty_output(images, size);
  const int64_t n = static_cast<int64_t>(entries.size());
  // The table: pinned host memory -> device, asynchronous on the current stream (the caching host
  // allocator keeps the pinned block alive until the copy has run).
  const int64_t table_bytes = n * static_cast<int64_t>(sizeof(Entry));
  at::Tensor host = at::empty({table_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), entries.data(), static_cast<size_t>(table_bytes));
  const at::Tensor table = host.to(images[0].device(), /*non_blocking=*/true);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(crop_blocks_per_image(size)), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  crop_resize_kernel<<<grid, kCropThreads, 0, stream>>>(reinterpret_cast<const Entry*>(table.data_ptr()), n,
                                                        static_cast<int32_t>(size), out.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace crop
}  // namespace fasttrain

TORCH_LIBRARY_IMPL(fasttrain, CUDA, m) { m.impl("crop_resize", &fasttrain::crop::crop_resize_cuda); }
