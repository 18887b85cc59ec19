// Fused lifting and group convolutions: expand the filter with the transform kernels, run the backend
// convolution through ATen (oneDNN on CPU, cuDNN on CUDA) with the bias folded in (repeated |G| times),
// and the explicit backward: one at::convolution_backward for the input, weight and bias gradients,
// then the adjoint transform on the weight gradient. The expanded filter is recomputed in the backward,
// never saved. Device-generic: only ATen calls and the device-dispatching transform functions.
#include <ATen/ATen.h>

#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

struct ConvKind {
  bool lifting;
  const char* input_layout;
  const char* weight_layout;
};

constexpr ConvKind kLifting{true, "[B, C_in, H, W]", "[C_out, C_in, k, k]"};
constexpr ConvKind kGroup{false, "[B, C_in, |G|, H, W]", "[C_out, C_in, |G|, k, k]"};

void check_params(c10::SymIntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2, "gconv_ext: ", name, " must have 2 elements, got ", v.size());
  for (const auto& e : v) {
    TORCH_CHECK_VALUE(e >= min, "gconv_ext: ", name, " must be >= ", min, ", got ", v);
  }
}

void check_conv(const ConvKind& kind, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
                bool reflections, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                c10::SymIntArrayRef dilation) {
  TORCH_CHECK_VALUE(rotations >= 1, "gconv_ext: rotations (N of C_N/D_N) must be >= 1, got ", rotations);
  const int64_t order = group_order(rotations, reflections);
  const int64_t in_dim = kind.lifting ? 4 : 5;
  TORCH_CHECK_VALUE(input.dim() == in_dim, "gconv_ext: input must be a ", in_dim, "-D tensor ", kind.input_layout,
                    ", got shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == in_dim, "gconv_ext: weight must be a ", in_dim, "-D tensor ",
                    kind.weight_layout, ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "gconv_ext: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK_TYPE(input.scalar_type() == weight.scalar_type(), "gconv_ext: input and weight must have the same dtype, got ",
                   input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(input.device() == weight.device(), "gconv_ext: input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "gconv_ext: input has ", input.size(1),
                    " channels but weight expects C_in = ", weight.size(1));
  if (!kind.lifting) {
    TORCH_CHECK_VALUE(input.size(2) == order, "gconv_ext: input.shape[2] must be the group order |G| = ", order,
                      " for ", (reflections ? "D" : "C"), rotations, ", got ", input.size(2));
  }
  check_params(stride, "stride", 1);
  check_params(padding, "padding", 0);
  check_params(dilation, "dilation", 1);
}

// The expanded filter as a planar convolution weight: [C_out * |G|, C_in (* |G|), k, k].
at::Tensor expand_filter(const ConvKind& kind, const at::Tensor& weight, int64_t rotations, bool reflections,
                         bool disk_mask) {
  const at::Tensor w = kind.lifting ? lift_filter(weight, rotations, reflections, disk_mask)
                                    : group_filter(weight, rotations, reflections, disk_mask);
  const int64_t order = group_order(rotations, reflections), k = weight.size(-1);
  return w.view({weight.size(0) * order, -1, k, k});
}

// The input as a planar feature map: the group axis folded into the channels.
at::Tensor planar(const ConvKind& kind, const at::Tensor& input) {
  if (kind.lifting) return input;
  return input.reshape({input.size(0), input.size(1) * input.size(2), input.size(3), input.size(4)});
}

at::Tensor conv_forward(const ConvKind& kind, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections, bool disk_mask,
                        c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  check_conv(kind, input, weight, rotations, reflections, stride, padding, dilation);
  const int64_t order = group_order(rotations, reflections), c_out = weight.size(0);
  std::optional<at::Tensor> folded_bias;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out, "gconv_ext: bias must have shape [C_out] = [",
                      c_out, "], got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), "gconv_ext: bias must have the dtype of weight (",
                     weight.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == weight.device(), "gconv_ext: bias must be on the device of weight (",
                weight.device(), "), got ", bias->device());
    // Shared across the group axis: output channel c * |G| + g gets bias[c].
    folded_bias = bias->unsqueeze(1).expand({c_out, order}).reshape({c_out * order});
  }
  const at::Tensor w = expand_filter(kind, weight, rotations, reflections, disk_mask);
  const std::array<c10::SymInt, 2> no_output_padding{0, 0};
  const at::Tensor out = at::convolution_symint(planar(kind, input), w, folded_bias, stride, padding, dilation,
                                                /*transposed=*/false, no_output_padding, /*groups=*/1);
  return out.reshape({out.size(0), c_out, order, out.size(2), out.size(3)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const ConvKind& kind, const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask) {
  check_conv(kind, input, weight, rotations, reflections, stride, padding, dilation);
  const int64_t order = group_order(rotations, reflections), c_out = weight.size(0);
  TORCH_CHECK_VALUE(grad_out.dim() == 5 && grad_out.size(0) == input.size(0) && grad_out.size(1) == c_out &&
                        grad_out.size(2) == order,
                    "gconv_ext: grad_out must have shape [B, C_out, |G|, H', W'] = [", input.size(0), ", ", c_out,
                    ", ", order, ", H', W'], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), "gconv_ext: grad_out must have the dtype of input (",
                   input.scalar_type(), "), got ", grad_out.scalar_type());
  const at::Tensor w = expand_filter(kind, weight, rotations, reflections, disk_mask);
  const at::Tensor go =
      grad_out.reshape({grad_out.size(0), c_out * order, grad_out.size(3), grad_out.size(4)});
  const std::array<c10::SymInt, 1> bias_sizes{c_out * order};
  const std::array<c10::SymInt, 2> no_output_padding{0, 0};
  auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
      go, planar(kind, input), w,
      output_mask[2] ? at::OptionalSymIntArrayRef(bias_sizes) : at::OptionalSymIntArrayRef(std::nullopt), stride,
      padding, dilation, /*transposed=*/false, no_output_padding, /*groups=*/1, output_mask);
  if (grad_input.defined() && !kind.lifting) grad_input = grad_input.reshape(input.sizes());
  if (grad_weight.defined()) {
    const int64_t c_in = weight.size(1), k = weight.size(-1);
    grad_weight = kind.lifting
                      ? lift_filter_backward(grad_weight.reshape({c_out, order, c_in, k, k}), rotations, reflections,
                                             disk_mask)
                      : group_filter_backward(grad_weight.reshape({c_out, order, c_in, order, k, k}), rotations,
                                              reflections, disk_mask);
  }
  if (grad_bias.defined()) grad_bias = grad_bias.view({c_out, order}).sum(1);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

at::Tensor lifting_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                          c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  return conv_forward(kLifting, input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation);
}

at::Tensor group_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                        c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  return conv_forward(kGroup, input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lifting_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
    bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask) {
  return conv_backward(kLifting, grad_out, input, weight, rotations, reflections, disk_mask, stride, padding, dilation,
                       output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
    bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask) {
  return conv_backward(kGroup, grad_out, input, weight, rotations, reflections, disk_mask, stride, padding, dilation,
                       output_mask);
}

}  // namespace gconv_ext
