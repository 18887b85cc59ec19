// Per-backend registration of the transform and pooling ops: a backend file defines its launchers as a
// constant TransformLaunchers / GroupPoolLaunchers / SpatialPoolLaunchers /
// NormPoolLaunchers and ends with, e.g.,
//
//   TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_filter_transforms<kCpuTransform>(m); }
//
// The kernels are stateless lambdas over the host functions of ops.h, so the CPU and CUDA files share one
// registration list. The convolutions are device-generic and registered once (conv.cpp).
#pragma once

#include <torch/library.h>

#include "gconv_ext/ops.h"

namespace gconv_ext {

template <const TransformLaunchers& R, const TransformKind& K>
at::Tensor transform_kernel(const at::Tensor& t, int64_t rotations, bool reflections, bool disk_mask) {
  return transform_host(R, K, t, rotations, reflections, disk_mask);
}

template <const TransformLaunchers& R>
void register_filter_transforms(torch::Library& m) {
  m.impl("lift_filter", &transform_kernel<R, kLiftFilter>);
  m.impl("lift_filter_backward", &transform_kernel<R, kLiftFilterBackward>);
  m.impl("group_filter", &transform_kernel<R, kGroupFilter>);
  m.impl("group_filter_backward", &transform_kernel<R, kGroupFilterBackward>);
}

template <const GroupPoolLaunchers& R>
void register_group_pool(torch::Library& m) {
  m.impl("group_pool", [](const at::Tensor& input, c10::string_view mode) { return group_pool_host(R, input, mode); });
  m.impl("group_pool_backward", [](const at::Tensor& grad_out, const at::Tensor& input, c10::string_view mode) {
    return group_pool_backward_host(R, grad_out, input, mode);
  });
}

template <const SpatialPoolLaunchers& R>
void register_spatial_pool(torch::Library& m) {
  m.impl("group_max_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding) {
    return spatial_pool_host(R, input, kernel_size, stride, padding, /*max=*/true);
  });
  m.impl("group_avg_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding) {
    return spatial_pool_host(R, input, kernel_size, stride, padding, /*max=*/false);
  });
  m.impl("group_max_pool2d_with_indices", [](const at::Tensor& input, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding) {
    return group_max_pool2d_with_indices_host(R, input, kernel_size, stride, padding);
  });
  m.impl("group_max_pool2d_backward", [](const at::Tensor& grad_out, const at::Tensor& indices,
                                         c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                         at::IntArrayRef stride, at::IntArrayRef padding) {
    return group_max_pool2d_backward_host(R, grad_out, indices, input_size, kernel_size, stride, padding);
  });
  m.impl("group_avg_pool2d_backward", [](const at::Tensor& grad_out, c10::SymIntArrayRef input_size,
                                         at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding) {
    return group_avg_pool2d_backward_host(R, grad_out, input_size, kernel_size, stride, padding);
  });
  m.impl("group_max_pool2d_gather", [](const at::Tensor& values, const at::Tensor& indices,
                                       at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
    return group_max_pool2d_gather_host(R, values, indices, kernel_size, stride, padding);
  });
}

template <const NormPoolLaunchers& R>
void register_norm_pool(torch::Library& m) {
  m.impl("group_layer_norm_relu_max_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding, double eps) {
    return norm_relu_max_pool_host(R, input, kernel_size, stride, padding, eps);
  });
  m.impl("group_layer_norm_relu_max_pool2d_backward",
         [](const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& out, const at::Tensor& indices,
            const at::Tensor& mean, const at::Tensor& rstd, at::IntArrayRef kernel_size, at::IntArrayRef stride,
            at::IntArrayRef padding) {
           return norm_relu_max_pool_backward_host(R, grad_out, input, out, indices, mean, rstd, kernel_size, stride,
                                                   padding);
         });
}

}  // namespace gconv_ext
