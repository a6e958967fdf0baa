// A C ABI over crop_resize.h's separable host implementation, for tests (ctypes, no torch): compiled by
// plain g++ with -ffp-contract=off, it is "the header on the host" the kernel's emulation must match bit
// for bit, and the code path the CPU JPEG decoder uses.
#include <cstdint>
#include <vector>

#include "crop_resize.h"

extern "C" {

// images: n pointers to HWC or CHW uint8 RGB images (strides sy, sx, sc per image, in elements);
// sizes (n, 2) h, w; boxes (n, 4) y0, x0, bh, bw; flips (n,); out (n, S, S, 3).
// Returns the index of the first image whose box covers no pixel, or -1 when all were written.
int64_t fasttrain_crop_resize_host(const uint8_t* const* images, const int32_t* sizes, const int64_t* strides,
                                   const float* boxes, const uint8_t* flips, int64_t n, int32_t S, uint8_t* out) {
  std::vector<float> scratch;
  for (int64_t i = 0; i < n; ++i) {
    const fasttrain::crop::Image im{images[i], sizes[2 * i], sizes[2 * i + 1], strides[3 * i], strides[3 * i + 1],
                                    strides[3 * i + 2]};
    const float* b = boxes + 4 * i;
    if (!fasttrain::crop::crop_resize_image(im, b[0], b[1], b[2], b[3], flips[i] != 0, S,
                                            out + i * int64_t{S} * S * 3, scratch)) {
      return i;
    }
  }
  return -1;
}

}  // extern "C"
