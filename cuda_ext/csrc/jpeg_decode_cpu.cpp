// The CPU JPEG decoder of the streaming pipeline: a batch of JPEGs -> uint8 [B, S, S, 3], each image
// cropped (a box in the stored image's pixels), resized to S x S and optionally mirrored, on a pool of
// threads with the GIL released.
//
// Per image (libjpeg-turbo's libjpeg API):
//   1. read the header; choose the DCT scale n/8 (n = 1..8) with the fewest pixels whose scaled crop is
//      still >= S in both directions, so the scaling never forces an upsample (n = 8 when the crop is
//      smaller than S already);
//   2. decode only the rows and columns the crop needs: jpeg_crop_scanline for the columns (widened by
//      libjpeg to whole iMCUs), jpeg_skip_scanlines for the rows above (entropy decoding only, no IDCT),
//      stop after the last row needed;
//   3. crop + antialiased resize + flip of that region into the output with crop_resize.h, the same code
//      as the CUDA kernel's (so the two agree bit for bit on the same decoded pixels).
// Errors (corrupt data, CMYK, a box outside the image) never abort: libjpeg's error_exit longjmps back,
// and the image's position in the batch and the message are returned to Python, which names the sample.

#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <jpeglib.h>

#include "crop_resize.h"

namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings (e.g. extraneous bytes before a marker) are not printed: libjpeg recovers, as PIL does.
void silent_message(j_common_ptr, int) {}

// Per-thread scratch, reused from image to image (never allocated inside the setjmp frame).
struct Scratch {
  std::vector<uint8_t> pixels;
  std::vector<JSAMPROW> rows;
  std::vector<float> resize;
};

constexpr int kMargin = 1;  // pixels decoded beyond the box on each side (see decode_one)

struct Job {
  const uint8_t* data;
  size_t size;
  double top, left, height, width;  // the box in the stored image's pixels
  bool flip;
};

// The DCT scale numerator n (scale n/8): the smallest n whose scaled crop is >= out in both directions.
int choose_scale(double crop_h, double crop_w, int out, bool allow_scaling) {
  if (!allow_scaling) return 8;
  for (int n = 1; n < 8; ++n)
    if (crop_h * n / 8.0 >= out && crop_w * n / 8.0 >= out) return n;
  return 8;
}

// Decodes job's crop region and resizes it into `out` (S*S*3 bytes). Returns "" or the error message.
// Only plain data lives in this frame: longjmp skips no destructor.
std::string decode_one(const Job& job, int out_size, bool allow_scaling, Scratch& scratch, uint8_t* out) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = error_exit;
  err.pub.emit_message = silent_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return std::string("corrupt or unsupported JPEG data (libjpeg: ") + err.message + ")";
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, job.data, static_cast<unsigned long>(job.size));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    return "CMYK JPEG: the store holds RGB or grey JPEGs only (convert the dataset again)";
  }
  const double img_h = cinfo.image_height, img_w = cinfo.image_width;
  if (job.height < 1 || job.width < 1 || job.top < 0 || job.left < 0 || job.top + job.height > img_h ||
      job.left + job.width > img_w) {
    jpeg_destroy_decompress(&cinfo);
    char msg[256];
    std::snprintf(msg, sizeof msg, "crop box (top %g, left %g, %g x %g) outside the %g x %g image (the index's "
                  "size disagrees with the JPEG header)", job.top, job.left, job.height, job.width, img_h, img_w);
    return msg;
  }
  const int n = choose_scale(job.height, job.width, out_size, allow_scaling);
  cinfo.out_color_space = JCS_RGB;  // grey is expanded to RGB by libjpeg
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.scale_num = n;
  cinfo.scale_denom = 8;
  jpeg_start_decompress(&cinfo);
  const double s = n / 8.0;
  const int scaled_h = static_cast<int>(cinfo.output_height), scaled_w = static_cast<int>(cinfo.output_width);
  // The box in the scaled image (exact: multiples of 1/8) and the pixels it touches: the resize reads
  // only those (its taps are clamped to the box, as torchvision's crop-then-resize). One more pixel on
  // each side: libjpeg upsamples the chroma of a region's edge column as if it were the image's edge,
  // so the region's own first and last columns can differ from a full decode; the box's never do.
  const double by = job.top * s, bx = job.left * s, bh = job.height * s, bw = job.width * s;
  const int r0 = std::max(0, static_cast<int>(std::floor(by)) - kMargin);
  const int r1 = std::min(scaled_h, static_cast<int>(std::ceil(by + bh)) + kMargin);
  JDIMENSION c0 = static_cast<JDIMENSION>(std::max(0, static_cast<int>(std::floor(bx)) - kMargin));
  const int c1 = std::min(scaled_w, static_cast<int>(std::ceil(bx + bw)) + kMargin);
  JDIMENSION cw = static_cast<JDIMENSION>(c1) - c0;
  if (c0 > 0 || static_cast<int>(cw) < scaled_w) jpeg_crop_scanline(&cinfo, &c0, &cw);  // widens to iMCUs
  const int region_w = static_cast<int>(cinfo.output_width), region_h = r1 - r0;
  scratch.pixels.resize(static_cast<size_t>(region_h) * region_w * 3);
  scratch.rows.resize(region_h);
  for (int r = 0; r < region_h; ++r) scratch.rows[r] = scratch.pixels.data() + static_cast<size_t>(r) * region_w * 3;
  if (r0 > 0) jpeg_skip_scanlines(&cinfo, r0);
  while (static_cast<int>(cinfo.output_scanline) < r1) {
    const int at = static_cast<int>(cinfo.output_scanline);
    jpeg_read_scanlines(&cinfo, scratch.rows.data() + (at - r0), r1 - at);
  }
  jpeg_abort_decompress(&cinfo);  // the rows below the crop are never decoded
  jpeg_destroy_decompress(&cinfo);
  const fasttrain::crop::Image region{scratch.pixels.data(), region_h, region_w, int64_t{3} * region_w, 3, 1};
  if (!fasttrain::crop::crop_resize_image(region, static_cast<float>(by - r0), static_cast<float>(bx - c0),
                                          static_cast<float>(bh), static_cast<float>(bw), job.flip, out_size, out,
                                          scratch.resize))
    return "empty crop box";
  return "";
}

// Decodes the whole image at scale n/8 (tests: the region decode must equal the same window of this).
torch::Tensor decode_full(torch::Tensor bytes, int64_t scale_num) {
  TORCH_CHECK(bytes.dtype() == torch::kUInt8 && bytes.dim() == 1 && bytes.is_contiguous(), "bytes: uint8 1-D");
  TORCH_CHECK(scale_num >= 1 && scale_num <= 8, "scale_num must lie in [1, 8]");
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = error_exit;
  err.pub.emit_message = silent_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    TORCH_CHECK(false, "corrupt or unsupported JPEG data (libjpeg: ", err.message, ")");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data_ptr<uint8_t>(), static_cast<unsigned long>(bytes.numel()));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.scale_num = static_cast<unsigned>(scale_num);
  cinfo.scale_denom = 8;
  jpeg_start_decompress(&cinfo);
  const int64_t h = cinfo.output_height, w = cinfo.output_width;
  uint8_t* buf = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(h * w * 3)));
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = buf + static_cast<size_t>(cinfo.output_scanline) * w * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  auto out = torch::empty({h, w, 3}, torch::kUInt8);
  std::memcpy(out.data_ptr<uint8_t>(), buf, static_cast<size_t>(h * w * 3));
  std::free(buf);
  return out;
}

// data: every JPEG of the batch concatenated (uint8 1-D); offsets: int64 [B + 1]; boxes: float64 [B, 4]
// (top, left, height, width in the stored image's pixels); flips: bool [B]; out: uint8 [B, S, S, 3].
// Returns (position in the batch, message) for every image that failed; the others are filled.
std::vector<std::pair<int64_t, std::string>> decode_crop_batch(torch::Tensor data, torch::Tensor offsets,
                                                               torch::Tensor boxes, torch::Tensor flips,
                                                               torch::Tensor out, int64_t threads,
                                                               bool allow_scaling) {
  TORCH_CHECK(data.dtype() == torch::kUInt8 && data.dim() == 1 && data.is_contiguous(), "data: uint8 1-D");
  TORCH_CHECK(offsets.dtype() == torch::kInt64 && offsets.dim() == 1 && offsets.is_contiguous(), "offsets: int64");
  const int64_t batch = offsets.numel() - 1;
  TORCH_CHECK(boxes.dtype() == torch::kFloat64 && boxes.sizes() == torch::IntArrayRef({batch, 4}) &&
              boxes.is_contiguous(), "boxes: float64 [B, 4]");
  TORCH_CHECK(flips.dtype() == torch::kBool && flips.numel() == batch && flips.is_contiguous(), "flips: bool [B]");
  TORCH_CHECK(out.dtype() == torch::kUInt8 && out.dim() == 4 && out.size(0) == batch && out.size(1) == out.size(2) &&
              out.size(3) == 3 && out.is_contiguous(), "out: contiguous uint8 [B, S, S, 3]");
  const int out_size = static_cast<int>(out.size(1));
  const uint8_t* base = data.data_ptr<uint8_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const double* box = boxes.data_ptr<double>();
  const bool* flip = flips.data_ptr<bool>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t total = data.numel();
  for (int64_t i = 0; i < batch; ++i)
    TORCH_CHECK(off[i] >= 0 && off[i] <= off[i + 1] && off[i + 1] <= total, "offsets out of range at ", i);

  std::vector<std::string> errors(static_cast<size_t>(batch));
  std::atomic<int64_t> next{0};
  const size_t image_bytes = static_cast<size_t>(out_size) * out_size * 3;
  auto work = [&]() {
    Scratch scratch;
    for (int64_t i = next++; i < batch; i = next++) {
      const Job job{base + off[i], static_cast<size_t>(off[i + 1] - off[i]), box[4 * i], box[4 * i + 1],
                    box[4 * i + 2], box[4 * i + 3], flip[i]};
      errors[i] = decode_one(job, out_size, allow_scaling, scratch, dst + i * image_bytes);
    }
  };
  {
    pybind11::gil_scoped_release no_gil;
    const int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(threads, batch));
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
    work();  // the calling thread is one of the workers
    for (auto& t : pool) t.join();
  }
  std::vector<std::pair<int64_t, std::string>> failed;
  for (int64_t i = 0; i < batch; ++i)
    if (!errors[i].empty()) failed.emplace_back(i, errors[i]);
  return failed;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_crop_batch", &decode_crop_batch, "JPEG batch -> cropped, resized, flipped uint8 [B, S, S, 3]");
  m.def("decode_full", &decode_full, "one JPEG -> uint8 [H, W, 3] at DCT scale n/8 (tests)");
}
