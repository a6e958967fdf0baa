// The batched crop-resize kernel's per-thread code, shared by the CUDA kernel (crop_resize_cuda.cu) and
// its host emulation (crop_resize_ops.cpp). Pure C++ like crop_resize.h.
//
// Layout: the decoded images stay where the decoder put them (torchvision's decode_jpeg(device="cuda")
// returns one (3, H, W) tensor per image): the kernel gets a table of one Entry per image (pointer, size,
// element strides, box, flip), built on the host and copied to the device in one transfer, so there is no
// packing copy of the pixels. Output: one dense (B, S, S, 3) uint8 buffer (NHWC, i.e. channels_last).
// Grid: x = ceil(S*S / kCropThreads) blocks per image, y = images (strided beyond 65535); one thread
// computes the 3 channels of one output pixel and writes its 3 bytes (neighbouring threads write
// neighbouring bytes, so the stores coalesce).
#pragma once

#include <cstdint>

#include "crop_resize.h"

namespace fasttrain {
namespace crop {

constexpr int kCropThreads = 256;

struct Entry {
  const uint8_t* data;  // the image: element (c, y, x) at data[c sc + y sy + x sx]
  int64_t sy, sx, sc;
  int32_t h, w;
  float y0, x0, bh, bw;  // the box, in the image's pixels
  int32_t flip;
  int32_t unused;  // keeps sizeof(Entry) a multiple of 8 on every compiler
};

// Output pixel q (0 <= q < S*S) of image e into out_image (S x S x 3).
FT_CR_HD inline void crop_resize_thread(const Entry& e, int32_t S, int32_t q, uint8_t* out_image) {
  const int32_t oy = q / S;
  const int32_t ox = q - oy * S;
  const Image im{e.data, e.h, e.w, e.sy, e.sx, e.sc};
  const Axis ay = make_axis(e.y0, e.bh, e.h, S);
  const Axis ax = make_axis(e.x0, e.bw, e.w, S);
  float v[3];
  resize_pixel(im, ay, ax, oy, source_column(ox, S, e.flip != 0), v);
  uint8_t* o = out_image + static_cast<int64_t>(q) * 3;
  for (int c = 0; c < 3; ++c) o[c] = to_uint8(v[c]);
}

inline int64_t crop_blocks_per_image(int64_t S) { return (S * S + kCropThreads - 1) / kCropThreads; }

}  // namespace crop
}  // namespace fasttrain
