// The CPU JPEG decoder of the streaming pipeline: a batch of JPEGs -> uint8 [B, S, S, 3], each image
// cropped (a box in the stored image's pixels), resized to S x S and optionally mirrored, on a pool of
// threads. Plain C++ with a C ABI (no torch header): cuda_ext/jpeg_cpu.py compiles it with g++ in seconds
// and calls it through ctypes, which releases the GIL for the call.
//
// Per image (libjpeg-turbo's libjpeg API):
//   1. read the header; choose the DCT scale (1/8, 1/4, 1/2 or 1) with the fewest pixels whose scaled crop
//      is still >= S in both directions, so the scaling never forces an upsample (full scale when the crop
//      is smaller than S already);
//   2. decode only the rows and columns the crop needs: jpeg_crop_scanline for the columns (widened by
//      libjpeg to whole iMCUs), jpeg_skip_scanlines for the rows above (entropy decoding only, no IDCT),
//      stop after the last row needed;
//   3. crop + antialiased resize + flip of that region into the output with crop_resize.h, the same code
//      as the CUDA kernel's (so the two agree bit for bit on the same decoded pixels).
// Errors (corrupt data, CMYK, a box outside the image) never abort: libjpeg's error_exit longjmps back,
// and the image's position in the batch and the message are returned to Python, which names the sample.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <jpeglib.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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
  std::vector<float> hpass, vsum;
  std::vector<uint8_t> flip_row;
  std::vector<int32_t> first_x, count_x;
  std::vector<float> weights_x, weights_y;
};

namespace crop = fasttrain::crop;

// crop::to_uint8 over a row: clamp to [0, 255], round half to even; 4 at a time with SSE2 (max/min equal
// the header's comparisons for the finite values that occur; cvtps2dq rounds in the MXCSR mode, which is
// round-to-nearest-even unless a program changes it: nothing in this process does).
void to_uint8_row(const float* v, int32_t n, uint8_t* out) {
  int32_t j = 0;
#if defined(__SSE2__)
  const __m128 lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.f);
  for (; j + 4 <= n; j += 4) {
    const __m128 c = _mm_min_ps(_mm_max_ps(_mm_loadu_ps(v + j), lo), hi);
    const __m128i q = _mm_cvtps_epi32(c);
    const __m128i b = _mm_packus_epi16(_mm_packs_epi32(q, q), _mm_setzero_si128());
    const int32_t four = _mm_cvtsi128_si32(b);
    std::memcpy(out + j, &four, 4);
  }
#endif
  for (; j < n; ++j) out[j] = crop::to_uint8(v[j]);
}

// crop_resize.h's crop_resize_image, with its loops arranged for speed and its arithmetic untouched: every
// tap weight comes from the header (taps, weight) and is computed once per output row or column instead
// of once per output pixel, and the vertical pass runs along whole rows (vectorisable: each output value
// still gets its products added in ascending tap order, starting from 0). So the bytes are the header's,
// which tests/test_stream_decode.py checks against the header's own host path (cuda_ext/crop_host.py).
bool resize_region(const crop::Image& im, float y0, float x0, float bh, float bw, bool flip, int32_t S,
                   uint8_t* dst, Scratch& s) {
  const crop::Axis ay = crop::make_axis(y0, bh, im.h, S);
  const crop::Axis ax = crop::make_axis(x0, bw, im.w, S);
  if (!crop::axis_valid(ay) || !crop::axis_valid(ax) || !(bh > 0.f) || !(bw > 0.f)) return false;
  const int32_t mx = crop::max_taps(ax);
  s.first_x.resize(S);
  s.count_x.resize(S);
  s.weights_x.assign(static_cast<size_t>(S) * mx, 0.f);
  for (int32_t ox = 0; ox < S; ++ox) {
    const crop::Taps t = crop::taps(ax, ox);
    s.first_x[ox] = t.first;
    s.count_x[ox] = t.count;
    for (int32_t k = 0; k < t.count; ++k) s.weights_x[static_cast<size_t>(ox) * mx + k] = crop::weight(ax, t, k);
  }
  // Horizontal pass over the source rows the output uses: [ay.lo, ay.hi) relative to ay.origin.
  const int32_t rows = ay.hi - ay.lo, row_len = S * 3;
  s.hpass.resize(static_cast<size_t>(rows) * row_len);
  for (int32_t r = 0; r < rows; ++r) {
    const uint8_t* row = im.data + static_cast<int64_t>(ay.origin + ay.lo + r) * im.sy;
    float* out = s.hpass.data() + static_cast<size_t>(r) * row_len;
    for (int32_t ox = 0; ox < S; ++ox) {
      const uint8_t* px = row + static_cast<int64_t>(ax.origin + s.first_x[ox]) * im.sx;
      const float* w = s.weights_x.data() + static_cast<size_t>(ox) * mx;
#if defined(__SSE2__)
      if (im.sx == 3 && im.sc == 1) {  // interleaved RGB: the 3 channels in one register (4th lane unused)
        const __m128i zero = _mm_setzero_si128();
        __m128 h = _mm_setzero_ps();
        for (int32_t k = 0; k < s.count_x[ox]; ++k, px += 3) {
          int32_t rgbx;
          std::memcpy(&rgbx, px, 4);  // the region buffer has slack, so the 4th byte is readable
          const __m128i p32 = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(rgbx), zero), zero);
          h = _mm_add_ps(h, _mm_mul_ps(_mm_set1_ps(w[k]), _mm_cvtepi32_ps(p32)));  // fl(h + fl(w * p))
        }
        alignas(16) float lanes[4];
        _mm_store_ps(lanes, h);
        out[3 * ox] = lanes[0];
        out[3 * ox + 1] = lanes[1];
        out[3 * ox + 2] = lanes[2];
        continue;
      }
#endif
      float h0 = 0.f, h1 = 0.f, h2 = 0.f;
      for (int32_t k = 0; k < s.count_x[ox]; ++k, px += im.sx) {
        h0 = crop::fadd(h0, crop::fmul(w[k], static_cast<float>(px[0])));
        h1 = crop::fadd(h1, crop::fmul(w[k], static_cast<float>(px[im.sc])));
        h2 = crop::fadd(h2, crop::fmul(w[k], static_cast<float>(px[2 * im.sc])));
      }
      out[3 * ox] = h0;
      out[3 * ox + 1] = h1;
      out[3 * ox + 2] = h2;
    }
  }
  // Vertical pass, one output row at a time.
  s.vsum.resize(row_len);
  s.flip_row.resize(row_len);
  s.weights_y.resize(crop::max_taps(ay));
  float* acc = s.vsum.data();
  for (int32_t oy = 0; oy < S; ++oy) {
    const crop::Taps t = crop::taps(ay, oy);
    for (int32_t k = 0; k < t.count; ++k) s.weights_y[k] = crop::weight(ay, t, k);
    for (int32_t j = 0; j < row_len; ++j) acc[j] = 0.f;
    for (int32_t k = 0; k < t.count; ++k) {
      const float wy = s.weights_y[k];
      const float* h = s.hpass.data() + static_cast<size_t>(t.first + k - ay.lo) * row_len;
      for (int32_t j = 0; j < row_len; ++j) acc[j] = crop::fadd(acc[j], crop::fmul(wy, h[j]));
    }
    uint8_t* drow = dst + static_cast<size_t>(oy) * row_len;
    uint8_t* bytes = flip ? s.flip_row.data() : drow;
    to_uint8_row(acc, row_len, bytes);
    if (flip)  // the flip mirrors the output column
      for (int32_t ox = 0; ox < S; ++ox)
        std::memcpy(drow + static_cast<size_t>(crop::source_column(ox, S, true)) * 3, bytes + 3 * ox, 3);
  }
  return true;
}

constexpr int kMargin = 1;  // pixels decoded beyond the box on each side (see decode_one)

struct Job {
  const uint8_t* data;
  size_t size;
  double top, left, height, width;  // the box in the stored image's pixels
  bool flip;
};

// The DCT scale numerator n (scale n/8): the smallest of 1, 2, 4 whose scaled crop is >= out in both
// directions, else 8. Only powers of two: libjpeg-turbo has SIMD inverse DCTs for 1/2 and 1/4 (and 1/8 is
// the DC term alone), while 3/8, 5/8, 6/8, 7/8 run plain C IDCTs (10x10 ... 14x14 for 4:2:0 chroma), which
// cost more than the smaller resize they buy (measured: ~8% slower on 160-900 px photos at 224 px).
int choose_scale(double crop_h, double crop_w, int out, bool allow_scaling) {
  if (!allow_scaling) return 8;
  for (int n = 1; n < 8; n *= 2)
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
  scratch.pixels.resize(static_cast<size_t>(region_h) * region_w * 3 + 16);  // + slack for 4-byte loads
  scratch.rows.resize(region_h);
  for (int r = 0; r < region_h; ++r) scratch.rows[r] = scratch.pixels.data() + static_cast<size_t>(r) * region_w * 3;
  if (r0 > 0) jpeg_skip_scanlines(&cinfo, r0);
  while (static_cast<int>(cinfo.output_scanline) < r1) {
    const int at = static_cast<int>(cinfo.output_scanline);
    jpeg_read_scanlines(&cinfo, scratch.rows.data() + (at - r0), r1 - at);
  }
  jpeg_abort_decompress(&cinfo);  // the rows below the crop are never decoded
  jpeg_destroy_decompress(&cinfo);
  const crop::Image region{scratch.pixels.data(), region_h, region_w, int64_t{3} * region_w, 3, 1};
  if (!resize_region(region, static_cast<float>(by - r0), static_cast<float>(bx - c0), static_cast<float>(bh),
                     static_cast<float>(bw), job.flip, out_size, out, scratch))
    return "empty crop box";
  return "";
}

// Copies a message into a caller's buffer of `cap` bytes, always NUL-terminated.
void put_message(char* dst, int64_t cap, const std::string& message) {
  if (cap <= 0) return;
  const size_t n = std::min(message.size(), static_cast<size_t>(cap - 1));
  std::memcpy(dst, message.data(), n);
  dst[n] = '\0';
}

}  // namespace

extern "C" {

// Decodes the whole image at scale n/8 (tests: the region decode must equal the same window of this).
// Writes the output size to *h, *w; decodes into `out` (uint8 [h, w, 3]) only when `capacity` holds it.
// Returns 0 when decoded, 1 when only the size was written (call again with a buffer), -1 on corrupt or
// unsupported data (the message in `error`).
int32_t fasttrain_jpeg_decode_full(const uint8_t* bytes, int64_t n, int32_t scale_num, uint8_t* out, int64_t capacity,
                                   int64_t* h, int64_t* w, char* error, int64_t error_cap) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = error_exit;
  err.pub.emit_message = silent_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    put_message(error, error_cap, std::string("corrupt or unsupported JPEG data (libjpeg: ") + err.message + ")");
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes, static_cast<unsigned long>(n));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.scale_num = static_cast<unsigned>(scale_num);
  cinfo.scale_denom = 8;
  jpeg_calc_output_dimensions(&cinfo);
  *h = cinfo.output_height;
  *w = cinfo.output_width;
  if (out == nullptr || capacity < *h * *w * 3) {
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_start_decompress(&cinfo);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out + static_cast<size_t>(cinfo.output_scanline) * static_cast<size_t>(*w) * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

// data: every JPEG of the batch concatenated (`total` bytes); offsets: int64 [B + 1]; boxes: float64 [B, 4]
// (top, left, height, width in the stored image's pixels); flips: uint8 [B]; out: uint8 [B, S, S, 3].
// The caller (jpeg_cpu.py) has checked the offsets. `errors` holds B messages of `error_cap` bytes each:
// empty for an image that decoded, else why it failed (the other images are filled). Returns the number
// of failed images.
int64_t fasttrain_jpeg_decode_crop_batch(const uint8_t* data, const int64_t* offsets, int64_t batch,
                                         const double* boxes, const uint8_t* flips, uint8_t* out, int32_t out_size,
                                         int64_t threads, int32_t allow_scaling, char* errors, int64_t error_cap) {
  std::vector<std::string> messages(static_cast<size_t>(batch));
  std::atomic<int64_t> next{0};
  const size_t image_bytes = static_cast<size_t>(out_size) * out_size * 3;
  auto work = [&]() {
    Scratch scratch;
    for (int64_t i = next++; i < batch; i = next++) {
      const Job job{data + offsets[i], static_cast<size_t>(offsets[i + 1] - offsets[i]), boxes[4 * i],
                    boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3], flips[i] != 0};
      messages[i] = decode_one(job, out_size, allow_scaling != 0, scratch, out + i * image_bytes);
    }
  };
  const int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(threads, batch));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
  work();  // the calling thread is one of the workers
  for (auto& t : pool) t.join();
  int64_t failed = 0;
  for (int64_t i = 0; i < batch; ++i) {
    put_message(errors + i * error_cap, error_cap, messages[i]);
    failed += messages[i].empty() ? 0 : 1;
  }
  return failed;
}

}  // extern "C"
