// Group pooling host functions (max or mean over the group axis of [B, C, |G|, H, W]): checks, layout
// and the device dispatch to the CPU / CUDA launchers over the shared per-element code.
#include <ATen/ATen.h>

#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

bool is_max(c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "max" || mode == "mean", "gconv_ext: mode must be 'max' or 'mean', got '", mode, "'");
  return mode == "max";
}

void check_pool_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 5, "gconv_ext: input must be a 5-D tensor [B, C, |G|, H, W], got shape ",
                    input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), "gconv_ext: input must be a floating-point tensor, got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(input.size(2) >= 1, "gconv_ext: the group axis (input.shape[2]) must be non-empty");
  TORCH_CHECK(input.device().is_cpu() || input.device().is_cuda(),
              "gconv_ext: input must be on a CPU or CUDA device, got ", input.device());
}

}  // namespace

at::Tensor group_pool(const at::Tensor& input, c10::string_view mode) {
  const bool max = is_max(mode);
  check_pool_input(input);
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty({input.size(0), input.size(1), input.size(3), input.size(4)}, in.options());
  if (out.numel() == 0) return out;
  const int64_t order = input.size(2), hw = input.size(3) * input.size(4);
#ifdef GCONV_EXT_WITH_CUDA
  if (in.is_cuda()) {
    group_pool_forward_cuda(in, out, order, hw, max);
    return out;
  }
#endif
  TORCH_CHECK(in.is_cpu(), "gconv_ext: this build has no CUDA support; got a tensor on ", in.device());
  group_pool_forward_cpu(in, out, order, hw, max);
  return out;
}

at::Tensor group_pool_backward(const at::Tensor& grad_out, const at::Tensor& input, c10::string_view mode) {
  const bool max = is_max(mode);
  check_pool_input(input);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == input.size(0) && grad_out.size(1) == input.size(1) &&
                        grad_out.size(2) == input.size(3) && grad_out.size(3) == input.size(4),
                    "gconv_ext: grad_out must have shape [B, C, H, W] of input ", input.sizes(), ", got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), "gconv_ext: grad_out must have the dtype of input (",
                   input.scalar_type(), "), got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == input.device(), "gconv_ext: grad_out and input must be on the same device, got ",
              grad_out.device(), " and ", input.device());
  const at::Tensor go = grad_out.contiguous(), in = input.contiguous();
  at::Tensor grad_in = at::empty(input.sizes(), in.options());
  if (grad_in.numel() == 0) return grad_in;
  const int64_t order = input.size(2), hw = input.size(3) * input.size(4);
#ifdef GCONV_EXT_WITH_CUDA
  if (in.is_cuda()) {
    group_pool_backward_cuda(go, in, grad_in, order, hw, max);
    return grad_in;
  }
#endif
  TORCH_CHECK(in.is_cpu(), "gconv_ext: this build has no CUDA support; got a tensor on ", in.device());
  group_pool_backward_cpu(go, in, grad_in, order, hw, max);
  return grad_in;
}

}  // namespace gconv_ext
