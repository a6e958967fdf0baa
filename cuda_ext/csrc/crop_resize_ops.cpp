// The torch side of fasttrain::crop_resize (schema in cuda_ext/ops.py): argument checks and the per-image
// table (messages name the argument, the image and what was expected), the CUDA kernel's registration (the
// kernel itself is in crop_resize_cuda.cu, behind launch.h) and its host emulation: crop_resize_kernel.h's
// per-thread code run block by block, thread by thread (the kernel has no shared memory and no barrier, so
// this loop order is the whole emulation), registered as the CPU kernel of the test-only op
// fasttrain::_crop_resize_emulated (same arguments as crop_resize, CPU images). Compiled by the host C++
// compiler with -ffp-contract=off (cuda_ext/loader.py), as crop_resize.h asks.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "crop_resize_kernel.h"
#include "launch.h"

namespace fasttrain {
namespace crop {

constexpr int64_t kMaxOutputSize = 16384;  // S * S * 3 fits 32-bit pixel indices with room to spare

// images: B uint8 tensors of shape (3, H, W), any strides (an HWC image as .permute(2, 0, 1)), all on one
// device; boxes: float32 (B, 4) = (y0, x0, h, w) in each image's pixels, on the CPU; flips: bool (B,), CPU.
inline std::vector<Entry> make_entries(at::TensorList images, const at::Tensor& boxes, const at::Tensor& flips,
                                       int64_t size) {
  const char* op = "fasttrain::crop_resize";
  const int64_t n = static_cast<int64_t>(images.size());
  TORCH_CHECK(n >= 1, op, ": needs at least one image");
  TORCH_CHECK(size >= 1 && size <= kMaxOutputSize, op, ": size must be in [1, ", kMaxOutputSize, "], got ", size);
  TORCH_CHECK(boxes.scalar_type() == at::kFloat && boxes.sizes() == at::IntArrayRef({n, 4}), op,
              ": boxes must be float32 of shape (", n, ", 4) = (y0, x0, h, w) per image, got ", boxes.scalar_type(),
              " ", boxes.sizes());
  TORCH_CHECK(flips.scalar_type() == at::kBool && flips.sizes() == at::IntArrayRef({n}), op,
              ": flips must be bool of shape (", n, "), got ", flips.scalar_type(), " ", flips.sizes());
  TORCH_CHECK(boxes.device().is_cpu() && flips.device().is_cpu(), op,
              ": boxes and flips must be CPU tensors (they travel to the GPU inside the op's image table)");
  const at::Tensor b = boxes.contiguous();
  const at::Tensor f = flips.contiguous();
  const float* bp = b.data_ptr<float>();
  const bool* fp = f.data_ptr<bool>();
  std::vector<Entry> entries(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& im = images[i];
    TORCH_CHECK(im.dim() == 3 && im.size(0) == 3 && im.scalar_type() == at::kByte, op, ": image ", i,
                " must be uint8 of shape (3, H, W) (RGB, as decode_jpeg returns it), got ", im.scalar_type(), " ",
                im.sizes());
    TORCH_CHECK(im.device() == images[0].device(), op, ": image ", i, " is on ", im.device(), " but image 0 is on ",
                images[0].device());
    TORCH_CHECK(im.size(1) >= 1 && im.size(2) >= 1 && im.size(1) < (int64_t{1} << 30) && im.size(2) < (int64_t{1} << 30),
                op, ": image ", i, " has an unusable size ", im.sizes());
    const float y0 = bp[4 * i], x0 = bp[4 * i + 1], bh = bp[4 * i + 2], bw = bp[4 * i + 3];
    TORCH_CHECK(std::isfinite(y0) && std::isfinite(x0) && std::isfinite(bh) && std::isfinite(bw) && bh > 0.f &&
                    bw > 0.f && std::fabs(y0) < 1e8f && std::fabs(x0) < 1e8f && bh < 1e8f && bw < 1e8f,
                op, ": box ", i, " = (", y0, ", ", x0, ", ", bh, ", ", bw,
                ") must be finite (y0, x0, h, w) with h, w > 0");
    const int32_t h = static_cast<int32_t>(im.size(1)), w = static_cast<int32_t>(im.size(2));
    TORCH_CHECK(axis_valid(make_axis(y0, bh, h, static_cast<int32_t>(size))) &&
                    axis_valid(make_axis(x0, bw, w, static_cast<int32_t>(size))),
                op, ": box ", i, " = (", y0, ", ", x0, ", ", bh, ", ", bw, ") covers no pixel of its ", h, "x", w,
                " image");
    Entry& e = entries[static_cast<size_t>(i)];
    e.data = im.data_ptr<uint8_t>();
    e.sc = im.stride(0);
    e.sy = im.stride(1);
    e.sx = im.stride(2);
    e.h = h;
    e.w = w;
    e.y0 = y0;
    e.x0 = x0;
    e.bh = bh;
    e.bw = bw;
    e.flip = fp[i] ? 1 : 0;
    e.unused = 0;
  }
  return entries;
}

inline at::Tensor empty_output(at::TensorList images, int64_t size) {
  return at::empty({static_cast<int64_t>(images.size()), size, size, 3}, images[0].options());
}

// ------------------------------------------------------------------------------------------- CUDA
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
  launch_crop_resize(reinterpret_cast<const Entry*>(table.data_ptr()), n, static_cast<int32_t>(size),
                     out.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ------------------------------------------------------------------------------------- host emulation
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

TORCH_LIBRARY_IMPL(fasttrain, CUDA, m) { m.impl("crop_resize", &fasttrain::crop::crop_resize_cuda); }
TORCH_LIBRARY_FRAGMENT(fasttrain, m) {
  m.def("_crop_resize_emulated(Tensor[] images, Tensor boxes, Tensor flips, int size) -> Tensor");
}

TORCH_LIBRARY_IMPL(fasttrain, CPU, m) { m.impl("_crop_resize_emulated", &fasttrain::crop::crop_resize_emulated); }
