// Host entry points shared by the CPU and CUDA registrations, and the per-backend launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

#include "gconv_ext/plan.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {

// Shapes of one filter transform: the filter is [c_out, c_in, gin, kk], the output [c_out, G, c_in, gin, kk].
struct TransformSizes {
  int64_t c_out, c_in, gin;
};

// Filter transforms (ops.cpp): host functions behind the gconv_ext::{lift,group}_filter[_backward] ops.
// lift: [C_out, C_in, k, k] <-> [C_out, |G|, C_in, k, k]; group: [C_out, C_in, |G|, k, k] <->
// [C_out, |G|, C_in, |G|, k, k]. Device-generic (CPU or CUDA launchers).
at::Tensor lift_filter(const at::Tensor& weight, int64_t rotations, bool reflections, bool disk_mask);
at::Tensor lift_filter_backward(const at::Tensor& grad, int64_t rotations, bool reflections, bool disk_mask);
at::Tensor group_filter(const at::Tensor& weight, int64_t rotations, bool reflections, bool disk_mask);
at::Tensor group_filter_backward(const at::Tensor& grad, int64_t rotations, bool reflections, bool disk_mask);

// Fused lifting / group convolutions (conv.cpp): filter transform + ATen convolution + shared bias.
// Device-generic: they call only ATen and the transform functions above.
at::Tensor lifting_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                          c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation);
at::Tensor group_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                        c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> lifting_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
    bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
    bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask);

// Group pooling over the group axis (group_pool.cpp): [B, C, |G|, H, W] -> [B, C, H, W], mode "max" or
// "mean"; the max backward sends the gradient to the first maximal element of each group fibre.
at::Tensor group_pool(const at::Tensor& input, c10::string_view mode);
at::Tensor group_pool_backward(const at::Tensor& grad_out, const at::Tensor& input, c10::string_view mode);

// Spatial pooling that keeps the group axis (spatial_pool.cpp): every [H, W] plane of [B, C, |G|, H, W]
// (or [B, C, H, W]) pooled on its own. Max: padding is -inf, the gradient goes to the first maximal
// element of each window (recomputed, not stored); avg: zero padding counted. `gather` reads `values` at
// the argmax of each window of `input` (the adjoint of the max backward, for double backward).
at::Tensor group_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding);
at::Tensor group_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding);
at::Tensor group_max_pool2d_backward(const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor group_avg_pool2d_backward(const at::Tensor& grad_out, c10::SymIntArrayRef input_size,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor group_max_pool2d_gather(const at::Tensor& values, const at::Tensor& input, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding);

// Launchers: `out` is preallocated and contiguous, `in` contiguous. Defined per backend.
void transform_forward_cpu(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s);
void transform_backward_cpu(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                            const TransformSizes& s);
// Group pooling launchers: `in` [BC, G, HW] and `grad_out` [BC, HW] contiguous, outputs preallocated.
void group_pool_forward_cpu(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, bool max);
void group_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order,
                             int64_t hw, bool max);
// Spatial pooling launchers: `in`, `values`, `grad_out` contiguous [N.., H, W] / [N.., OH, OW] (`in` undefined
// for the avg backward), outputs preallocated and non-empty.
void spatial_pool_forward_cpu(const at::Tensor& in, at::Tensor& out, const Pool2dGeom& g, bool max);
void spatial_pool_gather_cpu(const at::Tensor& values, const at::Tensor& in, at::Tensor& out, const Pool2dGeom& g);
void spatial_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in,
                               const Pool2dGeom& g, bool max);
#ifdef GCONV_EXT_WITH_CUDA
void spatial_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, const Pool2dGeom& g, bool max);
void spatial_pool_gather_cuda(const at::Tensor& values, const at::Tensor& in, at::Tensor& out, const Pool2dGeom& g);
void spatial_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in,
                                const Pool2dGeom& g, bool max);
void group_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, bool max);
void group_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order,
                              int64_t hw, bool max);
void transform_forward_cuda(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s);
void transform_backward_cuda(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                             const TransformSizes& s);
#endif

}  // namespace gconv_ext
