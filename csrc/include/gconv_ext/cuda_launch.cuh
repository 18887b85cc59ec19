// The launch boilerplate shared by the CUDA backends (CUDA translation units only): a grid-stride loop and
// one helper that does, for every elementwise launch, the device guard, the empty-tensor return, the current
// stream, the dtype dispatch (float, double, half, bfloat16) and the launch check.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace gconv_ext {

constexpr int kThreads = 256;

// Enough blocks to cover n elements, capped: the kernels loop (grid-stride) over the rest.
inline int64_t num_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(65535) * 8);
}

// for (i over [0, n)) split across the whole grid, 64-bit indices.
#define GCONV_EXT_GRID_STRIDE_LOOP(i, n)                                                     \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

// Launches one kernel over n elements on the device and stream of `like`, for its dtype:
//
//   launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
//     using scalar_t = decltype(tag);
//     my_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(...);
//   });
//
// n == 0 launches nothing (a zero-block launch is an error).
template <typename Launch>
void launch_elementwise(const at::Tensor& like, int64_t n, Launch&& launch) {
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(like.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>(num_blocks(n));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "gconv_ext_cuda_launch", [&] {
    launch(scalar_t{}, blocks, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gconv_ext
