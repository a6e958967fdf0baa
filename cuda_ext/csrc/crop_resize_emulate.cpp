// Host emulation of crop_resize_cuda.cu's kernel, for tests on machines without a GPU: the same
// crop_resize_thread code from crop_resize_kernel.h, run block by block, thread by thread (the kernel has
// no shared memory and no barrier, so this loop order is the whole emulation). Registered as the CPU kernel
// of the test-only op fasttrain::_crop_resize_emulated (same arguments as crop_resize, CPU images).
// Compiled by the host C++ compiler with -ffp-contract=off (cuda_ext/loader.py), as crop_resize.h asks.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "crop_resize_table.h"

namespace fasttrain {
namespace crop {

at::Tensor crop_resize_emulated(at::TensorList images, const at::Tensor& boxes, const at::Tensor& flips,
                                int64_t size) {
  const std::vector<Entry> entries = make_entries(images, boxes, flips, size);
  TORCH_CHECK(images[0].device().is_cpu(), "fasttrain::_crop_resize_emulated: images must be CPU tensors, got ",
              images[0].device());
  at::Tensor out = empty_output(images, size);
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int32_t S = static_cast<int32_t>(size);
  const int64_t blocks = crop_blocks_per_image(size);
  for (size_t i = 0; i < entries.size(); ++i) {
    uint8_t* image_out = dst + static_cast<int64_t>(i) * size * size * 3;
    for (int64_t bx = 0; bx < blocks; ++bx) {
      for (int t = 0; t < kCropThreads; ++t) {
        const int64_t q = bx * kCropThreads + t;
        if (q < size * size) crop_resize_thread(entries[i], S, static_cast<int32_t>(q), image_out);
      }
    }
  }
  return out;
}

}  // namespace crop
}  // namespace fasttrain

TORCH_LIBRARY_FRAGMENT(fasttrain, m) {
  m.def("_crop_resize_emulated(Tensor[] images, Tensor boxes, Tensor flips, int size) -> Tensor");
}

TORCH_LIBRARY_IMPL(fasttrain, CPU, m) { m.impl("_crop_resize_emulated", &fasttrain::crop::crop_resize_emulated); }
