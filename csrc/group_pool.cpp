// Group pooling host functions (max or mean over the group axis of [B, C, |G|, H, W]): checks and layout;
// the backends' launchers run the shared per-element arithmetic (group_pool.h).
#include <ATen/ATen.h>

#include <utility>

#include "gconv_ext/checks.h"
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
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.size(2) >= 1, "gconv_ext: the group axis (input.shape[2]) must be non-empty");
}

// The input as the kernels read it, and its group stride: an expanded view whose group axis has stride 0
// (e.g. x.unsqueeze(2).expand(-1, -1, G, -1, -1)) is read from one plane instead of being copied G times.
std::pair<at::Tensor, int64_t> kernel_input(const at::Tensor& input) {
  const int64_t hw = input.size(3) * input.size(4);
  if (input.size(2) > 1 && input.stride(2) == 0) return {input.narrow(2, 0, 1).contiguous(), 0};
  return {input.contiguous(), hw};
}

}  // namespace

at::Tensor group_pool_host(const GroupPoolLaunchers& run, const at::Tensor& input, c10::string_view mode) {
  const bool max = is_max(mode);
  check_pool_input(input);
  const auto [in, gstride] = kernel_input(input);
  at::Tensor out = at::empty({input.size(0), input.size(1), input.size(3), input.size(4)}, in.options());
  if (out.numel() == 0) return out;
  run.forward(in, out, input.size(2), input.size(3) * input.size(4), gstride, max);
  return out;
}

at::Tensor group_pool_backward_host(const GroupPoolLaunchers& run, const at::Tensor& grad_out,
                                    const at::Tensor& input, c10::string_view mode) {
  const bool max = is_max(mode);
  check_pool_input(input);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == input.size(0) && grad_out.size(1) == input.size(1) &&
                        grad_out.size(2) == input.size(3) && grad_out.size(3) == input.size(4),
                    "gconv_ext: grad_out must have shape [B, C, H, W] of input ", input.sizes(), ", got ",
                    grad_out.sizes());
  check_like(grad_out, "grad_out", input, "input");
  const at::Tensor go = grad_out.contiguous();
  const auto [in, gstride] = kernel_input(input);
  at::Tensor grad_in = at::empty(input.sizes(), in.options());
  if (grad_in.numel() == 0) return grad_in;
  run.backward(go, in, grad_in, input.size(2), input.size(3) * input.size(4), gstride, max);
  return grad_in;
}

}  // namespace gconv_ext
