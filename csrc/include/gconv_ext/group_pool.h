// Per-element arithmetic of group pooling (max or mean over the group axis): the one source compiled
// by both g++ (CPU loops) and nvcc (CUDA kernels). Layouts (contiguous):
//   input  [BC, G, HW] (or [BC, 1, HW] broadcast over G)      output / grad_out [BC, HW]
//   out[bc, p]         = max_g in[bc, g, p]   or   mean_g in[bc, g, p]
//   grad_in[bc, g, p]  = grad_out[bc, p] if g is the FIRST maximal element of the fibre, else 0 (max);
//                        grad_out[bc, p] / G (mean)
// The max backward recomputes the argmax instead of saving indices: deterministic, no atomics.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace gconv_ext {

// Index of the first maximal element of x[0], x[stride], ..., x[(order - 1) * stride]; a NaN counts as
// maximal (the first NaN wins), as in torch.argmax / torch.amax.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline int64_t group_argmax(const scalar_t* __restrict__ x, int64_t order, int64_t stride) {
  acc_t best = static_cast<acc_t>(x[0]);
  int64_t arg = 0;
  for (int64_t g = 1; g < order && best == best; ++g) {
    const acc_t v = static_cast<acc_t>(x[g * stride]);
    if (v > best || v != v) {
      best = v;
      arg = g;
    }
  }
  return arg;
}

// The input's group stride: hw for a contiguous [BC, G, HW] input, 0 for a group axis broadcast from one
// plane ([BC, 1, HW] read G times: an expanded view pooled without materialising it). The results are the
// same as for the materialised copy: every fibre element is read and summed in the same order.
C10_HOST_DEVICE inline int64_t group_pool_input_offset(int64_t idx, int64_t order, int64_t hw, int64_t gstride) {
  return (idx / hw) * (gstride == 0 ? 1 : order) * hw + idx % hw;
}

// Forward, output element idx of [BC, HW].
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline scalar_t group_pool_forward_at(const scalar_t* __restrict__ in, int64_t idx, int64_t order,
                                                      int64_t hw, int64_t gstride, bool max) {
  const scalar_t* x = in + group_pool_input_offset(idx, order, hw, gstride);
  if (max) return x[group_argmax<acc_t>(x, order, gstride) * gstride];
  acc_t acc = acc_t(0);
  for (int64_t g = 0; g < order; ++g) acc += static_cast<acc_t>(x[g * gstride]);
  return static_cast<scalar_t>(acc / static_cast<acc_t>(order));
}

// Backward for output element idx of [BC, HW]: writes the `order` gradients of its group fibre (grad_in is
// always a contiguous [BC, G, HW]).
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline void group_pool_backward_at(const scalar_t* __restrict__ grad_out,
                                                   const scalar_t* __restrict__ in, scalar_t* __restrict__ grad_in,
                                                   int64_t idx, int64_t order, int64_t hw, int64_t gstride, bool max) {
  const int64_t off = (idx / hw) * order * hw + idx % hw;
  const acc_t go = static_cast<acc_t>(grad_out[idx]);
  if (max) {
    const int64_t arg = group_argmax<acc_t>(in + group_pool_input_offset(idx, order, hw, gstride), order, gstride);
    for (int64_t g = 0; g < order; ++g) grad_in[off + g * hw] = static_cast<scalar_t>(g == arg ? go : acc_t(0));
  } else {
    const scalar_t v = static_cast<scalar_t>(go / static_cast<acc_t>(order));
    for (int64_t g = 0; g < order; ++g) grad_in[off + g * hw] = v;
  }
}

}  // namespace gconv_ext
