// Launch configuration shared by the grid-stride kernels (CUDA translation units only).
#pragma once

#include <algorithm>
#include <cstdint>

namespace gconv_ext {

constexpr int kThreads = 256;

// Enough blocks to cover n elements, capped: the kernels loop (grid-stride) over the rest.
inline int64_t num_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(65535) * 8);
}

}  // namespace gconv_ext
