// The CUDA kernels' launchers: the only functions the .cu files export. The .cu files include no torch
// header, so nvcc compiles each for every GPU architecture in seconds; the torch side of each op
// (argument checks, device guard, stream, registration, host emulation) is plain C++ in *_ops.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fasttrain {

struct Args;
enum class OutType { kFloat, kHalf, kBFloat16 };

// augment_cuda.cu: one launch over a.n samples, writing a.out as `type` (a.n, a.h, a.w > 0).
void launch_augment(const Args& a, OutType type, cudaStream_t stream);

namespace crop {
struct Entry;

// crop_resize_cuda.cu: `table` holds n Entries in device memory; out is a dense (n, size, size, 3) buffer.
void launch_crop_resize(const Entry* table, int64_t n, int32_t size, uint8_t* out, cudaStream_t stream);
}  // namespace crop

}  // namespace fasttrain
