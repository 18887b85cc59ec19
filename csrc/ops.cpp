// Operator schemas (the one TORCH_LIBRARY block), the filter-transform host functions and the CPU/CUDA
// registrations (the fused convolutions live in conv.cpp, group pooling in group_pool.cpp, spatial pooling in
// spatial_pool.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

void check_filter(const at::Tensor& t, const char* name, int64_t expected_dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == expected_dim, "gconv_ext: ", name, " must be a ", expected_dim, "-D tensor ", layout,
                    ", got shape ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "gconv_ext: ", name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.size(-1) == t.size(-2), "gconv_ext: ", name, " must have a square kernel, got ",
                    t.size(-2), "x", t.size(-1));
  TORCH_CHECK_VALUE(t.size(-1) >= 1, "gconv_ext: ", name, " kernel size must be >= 1, got ", t.size(-1));
  TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), "gconv_ext: ", name,
              " must be on a CPU or CUDA device, got ", t.device());
}

void check_group(int64_t rotations) {
  TORCH_CHECK_VALUE(rotations >= 1, "gconv_ext: rotations (N of C_N/D_N) must be >= 1, got ", rotations);
}

void check_order(const at::Tensor& t, const char* name, int64_t dim, int64_t order, int64_t rotations,
                 bool reflections) {
  TORCH_CHECK_VALUE(t.size(dim) == order, "gconv_ext: ", name, ".shape[", dim, "] must be the group order |G| = ",
                    order, " for ", (reflections ? "D" : "C"), rotations, ", got ", t.size(dim));
}

at::Tensor run_forward(const at::Tensor& in, at::Tensor& out, const PlanKey& key, const TransformSizes& s) {
  if (out.numel() == 0) return out;
  const DevicePlan& plan = cached_plan(key, in.device());
#ifdef GCONV_EXT_WITH_CUDA
  if (in.is_cuda()) {
    transform_forward_cuda(in, out, plan, s);
    return out;
  }
#endif
  TORCH_CHECK(in.is_cpu(), "gconv_ext: this build has no CUDA support; got a tensor on ", in.device());
  transform_forward_cpu(in, out, plan, s);
  return out;
}

at::Tensor run_backward(const at::Tensor& grad_out, at::Tensor& grad_in, const PlanKey& key,
                        const TransformSizes& s) {
  if (grad_in.numel() == 0) return grad_in;
  if (grad_out.numel() == 0) return grad_in.zero_();
  const DevicePlan& plan = cached_plan(key, grad_out.device());
#ifdef GCONV_EXT_WITH_CUDA
  if (grad_out.is_cuda()) {
    transform_backward_cuda(grad_out, grad_in, plan, s);
    return grad_in;
  }
#endif
  TORCH_CHECK(grad_out.is_cpu(), "gconv_ext: this build has no CUDA support; got a tensor on ", grad_out.device());
  transform_backward_cpu(grad_out, grad_in, plan, s);
  return grad_in;
}

}  // namespace

at::Tensor lift_filter(const at::Tensor& weight, int64_t rotations, bool reflections, bool disk_mask) {
  check_group(rotations);
  check_filter(weight, "weight", 4, "[C_out, C_in, k, k]");
  const int64_t order = group_order(rotations, reflections), k = weight.size(-1);
  const at::Tensor in = weight.contiguous();
  at::Tensor out = at::empty({weight.size(0), order, weight.size(1), k, k}, in.options());
  return run_forward(in, out, {rotations, reflections, k, disk_mask}, {weight.size(0), weight.size(1), 1});
}

at::Tensor lift_filter_backward(const at::Tensor& grad, int64_t rotations, bool reflections, bool disk_mask) {
  check_group(rotations);
  check_filter(grad, "grad", 5, "[C_out, |G|, C_in, k, k]");
  const int64_t order = group_order(rotations, reflections), k = grad.size(-1);
  check_order(grad, "grad", 1, order, rotations, reflections);
  const at::Tensor g = grad.contiguous();
  at::Tensor out = at::empty({grad.size(0), grad.size(2), k, k}, g.options());
  return run_backward(g, out, {rotations, reflections, k, disk_mask}, {grad.size(0), grad.size(2), 1});
}

at::Tensor group_filter(const at::Tensor& weight, int64_t rotations, bool reflections, bool disk_mask) {
  check_group(rotations);
  check_filter(weight, "weight", 5, "[C_out, C_in, |G|, k, k]");
  const int64_t order = group_order(rotations, reflections), k = weight.size(-1);
  check_order(weight, "weight", 2, order, rotations, reflections);
  const at::Tensor in = weight.contiguous();
  at::Tensor out = at::empty({weight.size(0), order, weight.size(1), order, k, k}, in.options());
  return run_forward(in, out, {rotations, reflections, k, disk_mask}, {weight.size(0), weight.size(1), order});
}

at::Tensor group_filter_backward(const at::Tensor& grad, int64_t rotations, bool reflections, bool disk_mask) {
  check_group(rotations);
  check_filter(grad, "grad", 6, "[C_out, |G|, C_in, |G|, k, k]");
  const int64_t order = group_order(rotations, reflections), k = grad.size(-1);
  check_order(grad, "grad", 1, order, rotations, reflections);
  check_order(grad, "grad", 3, order, rotations, reflections);
  const at::Tensor g = grad.contiguous();
  at::Tensor out = at::empty({grad.size(0), grad.size(2), order, k, k}, g.options());
  return run_backward(g, out, {rotations, reflections, k, disk_mask}, {grad.size(0), grad.size(2), order});
}

TORCH_LIBRARY(gconv_ext, m) {
  m.def("lift_filter(Tensor weight, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("lift_filter_backward(Tensor grad, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("group_filter(Tensor weight, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("group_filter_backward(Tensor grad, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def(
      "lifting_conv2d(Tensor input, Tensor weight, Tensor? bias, int rotations, bool reflections, bool disk_mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  m.def(
      "lifting_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, int rotations, bool reflections, "
      "bool disk_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "group_conv2d(Tensor input, Tensor weight, Tensor? bias, int rotations, bool reflections, bool disk_mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  m.def(
      "group_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, int rotations, bool reflections, "
      "bool disk_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("group_pool(Tensor input, str mode) -> Tensor");
  m.def("group_pool_backward(Tensor grad_out, Tensor input, str mode) -> Tensor");
  m.def("group_max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def("group_avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "group_max_pool2d_backward(Tensor grad_out, Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) "
      "-> Tensor");
  m.def(
      "group_avg_pool2d_backward(Tensor grad_out, SymInt[] input_size, int[2] kernel_size, int[2] stride, "
      "int[2] padding) -> Tensor");
  m.def(
      "group_max_pool2d_gather(Tensor values, Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) "
      "-> Tensor");
}

namespace {

// The same device-generic host functions serve both backends: they dispatch to the CPU loops or the
// CUDA launchers by the tensors' device.
void register_kernels(torch::Library& m) {
  m.impl("lift_filter", &lift_filter);
  m.impl("lift_filter_backward", &lift_filter_backward);
  m.impl("group_filter", &group_filter);
  m.impl("group_filter_backward", &group_filter_backward);
  m.impl("lifting_conv2d", &lifting_conv2d);
  m.impl("lifting_conv2d_backward", &lifting_conv2d_backward);
  m.impl("group_conv2d", &group_conv2d);
  m.impl("group_conv2d_backward", &group_conv2d_backward);
  m.impl("group_pool", &group_pool);
  m.impl("group_pool_backward", &group_pool_backward);
  m.impl("group_max_pool2d", &group_max_pool2d);
  m.impl("group_avg_pool2d", &group_avg_pool2d);
  m.impl("group_max_pool2d_backward", &group_max_pool2d_backward);
  m.impl("group_avg_pool2d_backward", &group_avg_pool2d_backward);
  m.impl("group_max_pool2d_gather", &group_max_pool2d_gather);
}

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_kernels(m); }

#ifdef GCONV_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(gconv_ext, CUDA, m) { register_kernels(m); }
#endif

}  // namespace gconv_ext
