// Host entry points shared by the CPU and CUDA registrations, and the per-backend launchers.
#pragma once

#include <ATen/core/Tensor.h>

#include "gconv_ext/plan.h"

namespace gconv_ext {

// Shapes of one filter transform: the filter is [c_out, c_in, gin, kk], the output [c_out, G, c_in, gin, kk].
struct TransformSizes {
  int64_t c_out, c_in, gin;
};

// Launchers: `out` is preallocated and contiguous, `in` contiguous. Defined per backend.
void transform_forward_cpu(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s);
void transform_backward_cpu(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                            const TransformSizes& s);
#ifdef GCONV_EXT_WITH_CUDA
void transform_forward_cuda(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s);
void transform_backward_cuda(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                             const TransformSizes& s);
#endif

}  // namespace gconv_ext
