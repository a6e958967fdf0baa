// Host emulation of augment_cuda.cu's kernel, for tests on machines without a GPU: the same
// block_compute / block_store code from augment.cuh, run block by block, thread by thread, with the
// __syncthreads() between the two phases becoming the end of a loop over threads. Registered as the
// CPU kernel of the test-only op fasttrain::_augment_out_emulated (same arguments as augment_out).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "augment.cuh"
#include "checks.h"

namespace fasttrain {

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
    case at::kBFloat16:
      emulate<__nv_bfloat16>(a);
      break;
    default:
      TORCH_CHECK(false, "fasttrain::augment: unsupported output dtype ", out.scalar_type());
  }
}

}  // namespace fasttrain

TORCH_LIBRARY_FRAGMENT(fasttrain, m) {
  m.def(
      "_augment_out_emulated(Tensor x, Tensor labels, Tensor offset, Tensor flip, Tensor cutout, "
      "Tensor mix_index, Tensor mix_lam, Tensor cutmix, Tensor scale, Tensor bias, int pad, bool reflect, "
      "Tensor(a!) out, Tensor(b!) y_b, Tensor(c!) lam) -> ()");
}

TORCH_LIBRARY_IMPL(fasttrain, CPU, m) {
  m.impl("_augment_out_emulated", &fasttrain::augment_out_emulated);
}
