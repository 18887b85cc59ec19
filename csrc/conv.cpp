// Fused lifting and group convolutions: expand the filter with the transform kernels, run the backend
// convolution through ATen (oneDNN on CPU, cuDNN on CUDA) with the bias folded in (repeated |G| times),
// and the explicit backward: one at::convolution_backward for the input, weight and bias gradients,
// then the adjoint transform on the weight gradient. The backward op expands the filter again, and only when the
// input gradient is asked for; the C++ autograd (conv_autograd.cpp) instead hands it the filter the forward
// built when that filter is small (conv_forward_direct / conv_backward_direct). Device-generic: only ATen calls
// and the transform ops (through the dispatcher, which picks the backend), so the two ops and their backward ops
// are registered once, under CompositeExplicitAutograd; their fake kernels, and the backward ops' autograd, are
// in gconv_ext/ops/conv.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>

#include "gconv_ext/checks.h"
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

using TransformFn = at::Tensor(const at::Tensor&, int64_t, bool, bool);

enum class Transform { kLift, kLiftBackward, kGroup, kGroupBackward };

// The transform ops, called through the dispatcher (the backend's kernel, below autograd). Their handles are
// looked up once (a schema lookup by name costs about a microsecond, on every call of a batch-1 step).
at::Tensor call_transform(Transform which, const at::Tensor& t, int64_t rotations, bool reflections, bool disk_mask) {
  static const std::array<c10::TypedOperatorHandle<TransformFn>, 4> handles = [] {
    auto find = [](const char* name) {
      return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<TransformFn>();
    };
    return std::array<c10::TypedOperatorHandle<TransformFn>, 4>{
        find("gconv_ext::lift_filter"), find("gconv_ext::lift_filter_backward"), find("gconv_ext::group_filter"),
        find("gconv_ext::group_filter_backward")};
  }();
  return handles[static_cast<int>(which)].call(t, rotations, reflections, disk_mask);
}

void check_conv(const ConvKind& kind, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
                bool reflections, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                c10::SymIntArrayRef dilation) {
  check_group(rotations);
  const int64_t in_dim = kind.lifting ? 4 : 5;
  TORCH_CHECK_VALUE(input.dim() == in_dim, "gconv_ext: input must be a ", in_dim, "-D tensor ", kind.input_layout,
                    ", got shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == in_dim, "gconv_ext: weight must be a ", in_dim, "-D tensor ",
                    kind.weight_layout, ", got shape ", weight.sizes());
  check_floating(input, "input");
  TORCH_CHECK_TYPE(input.scalar_type() == weight.scalar_type(),
                   "gconv_ext: input and weight must have the same dtype, got ", dtype_name(input.scalar_type()),
                   " and ", dtype_name(weight.scalar_type()));
  TORCH_CHECK(input.device() == weight.device(), "gconv_ext: input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  TORCH_CHECK_VALUE(input.size(1) == weight.size(1), "gconv_ext: input has ", input.size(1),
                    " channels but weight expects C_in = ", weight.size(1));
  if (!kind.lifting) check_order(input, "input", 2, rotations, reflections);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(weight.size(-1) == weight.size(-2) && weight.size(-1) >= 1,
                    "gconv_ext: weight must have a square kernel of size >= 1, got ", weight.size(-2), "x",
                    weight.size(-1));
  for (int d = 0; d < 2; ++d) {
    const int64_t size = input.size(input.dim() - 2 + d), p = padding[d].expect_int(), dil = dilation[d].expect_int();
    TORCH_CHECK_VALUE(size + 2 * p - dil * (weight.size(-1) - 1) - 1 >= 0, "gconv_ext: input spatial size ", size,
                      " is too small for kernel ", weight.size(-1), " with padding ", p, " and dilation ", dil);
  }
}

// The output's spatial size along dim d (0: H, 1: W): (H + 2p - d(k-1) - 1) / s + 1.
int64_t conv_out_size(const at::Tensor& input, const at::Tensor& weight, c10::SymIntArrayRef stride,
                      c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, int d) {
  const int64_t size = input.size(input.dim() - 2 + d);
  return (size + 2 * padding[d].expect_int() - dilation[d].expect_int() * (weight.size(-1) - 1) - 1) /
             stride[d].expect_int() + 1;
}

// The shape of the expanded filter as a planar convolution weight: [C_out * |G|, C_in (* |G|), k, k]
// (explicit sizes, not -1: C_out = 0 or C_in = 0 are valid, empty filters).
std::array<int64_t, 4> expanded_sizes(const ConvKind& kind, const at::Tensor& weight, int64_t order) {
  const int64_t k = weight.size(-1);
  return {weight.size(0) * order, weight.size(1) * (kind.lifting ? 1 : order), k, k};
}

// The expanded filter as a planar convolution weight.
at::Tensor expand_filter(const ConvKind& kind, const at::Tensor& weight, int64_t rotations, bool reflections,
                         bool disk_mask) {
  const at::Tensor w = call_transform(kind.lifting ? Transform::kLift : Transform::kGroup, weight, rotations,
                                      reflections, disk_mask);
  return w.view(expanded_sizes(kind, weight, group_order(rotations, reflections)));
}

// The input as a planar feature map: the group axis folded into the channels.
at::Tensor planar(const ConvKind& kind, const at::Tensor& input) {
  if (kind.lifting) return input;
  return input.reshape({input.size(0), input.size(1) * input.size(2), input.size(3), input.size(4)});
}

at::Tensor conv_forward(const ConvKind& kind, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections, bool disk_mask,
                        c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                        at::Tensor* expanded = nullptr) {
  check_conv(kind, input, weight, rotations, reflections, stride, padding, dilation);
  const int64_t order = group_order(rotations, reflections), c_out = weight.size(0);
  std::optional<at::Tensor> folded_bias;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out, "gconv_ext: bias must have shape [C_out] = [",
                      c_out, "], got ", bias->sizes());
    check_like(*bias, "bias", weight, "weight");
    // Shared across the group axis: output channel c * |G| + g gets bias[c].
    folded_bias = bias->unsqueeze(1).expand({c_out, order}).reshape({c_out * order});
  }
  if (c_out == 0) {  // empty filters: an empty output (ATen's convolution refuses zero output channels)
    return at::empty({input.size(0), 0, order, conv_out_size(input, weight, stride, padding, dilation, 0),
                      conv_out_size(input, weight, stride, padding, dilation, 1)},
                     input.options());
  }
  const at::Tensor w = expand_filter(kind, weight, rotations, reflections, disk_mask);
  if (expanded != nullptr) *expanded = w;
  const std::array<c10::SymInt, 2> no_output_padding{0, 0};
  const at::Tensor out = at::convolution_symint(planar(kind, input), w, folded_bias, stride, padding, dilation,
                                                /*transposed=*/false, no_output_padding, /*groups=*/1);
  return out.reshape({out.size(0), c_out, order, out.size(2), out.size(3)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(
    const ConvKind& kind, const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask, const at::Tensor& expanded = at::Tensor()) {
  check_conv(kind, input, weight, rotations, reflections, stride, padding, dilation);
  const int64_t order = group_order(rotations, reflections), c_out = weight.size(0);
  const int64_t oh = conv_out_size(input, weight, stride, padding, dilation, 0);
  const int64_t ow = conv_out_size(input, weight, stride, padding, dilation, 1);
  TORCH_CHECK_VALUE(grad_out.dim() == 5 && grad_out.size(0) == input.size(0) && grad_out.size(1) == c_out &&
                        grad_out.size(2) == order && grad_out.size(3) == oh && grad_out.size(4) == ow,
                    "gconv_ext: grad_out must have the output shape [B, C_out, |G|, H', W'] = [", input.size(0), ", ",
                    c_out, ", ", order, ", ", oh, ", ", ow, "], got ", grad_out.sizes());
  check_like(grad_out, "grad_out", input, "input");
  if (c_out == 0) {  // nothing flows back through empty filters
    return {output_mask[0] ? at::zeros_like(input) : at::Tensor(),
            output_mask[1] ? at::zeros_like(weight) : at::Tensor(),
            output_mask[2] ? at::zeros({0}, weight.options()) : at::Tensor()};
  }
  // The expanded filter's values are read only for the input gradient. When only the weight and bias
  // gradients are asked for (a lifting layer, whose image input needs none; the double backward's
  // weight-only calls), the backend needs nothing but its shape: skip the transform. The autograd may pass
  // the filter its forward built (`expanded`): then nothing is expanded again.
  const at::Tensor w = expanded.defined() ? expanded
                       : output_mask[0]   ? expand_filter(kind, weight, rotations, reflections, disk_mask)
                                          : at::empty(expanded_sizes(kind, weight, order), weight.options());
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
                      ? call_transform(Transform::kLiftBackward, grad_weight.reshape({c_out, order, c_in, k, k}),
                                       rotations, reflections, disk_mask)
                      : call_transform(Transform::kGroupBackward,
                                       grad_weight.reshape({c_out, order, c_in, order, k, k}), rotations, reflections,
                                       disk_mask);
  }
  if (grad_bias.defined()) grad_bias = grad_bias.view({c_out, order}).sum(1);
  return {grad_input, grad_weight, grad_bias};
}

// The kernels as registered: the kind fixed at compile time.
template <const ConvKind& kind>
at::Tensor conv_forward_kernel(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                               c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  return conv_forward(kind, input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation);
}

template <const ConvKind& kind>
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t rotations,
    bool reflections, bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
    c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask) {
  return conv_backward(kind, grad_out, input, weight, rotations, reflections, disk_mask, stride, padding, dilation,
                       output_mask);
}

}  // namespace

at::Tensor conv_forward_direct(bool lifting, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections,
                               bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                               c10::SymIntArrayRef dilation, at::Tensor* expanded) {
  return conv_forward(lifting ? kLifting : kGroup, input, weight, bias, rotations, reflections, disk_mask, stride,
                      padding, dilation, expanded);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_direct(
    bool lifting, const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& expanded, int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask) {
  if (expanded.defined()) {
    const int64_t order = group_order(rotations, reflections);
    const auto want = expanded_sizes(lifting ? kLifting : kGroup, weight, order);
    TORCH_CHECK(expanded.sizes() == at::IntArrayRef(want) && expanded.scalar_type() == weight.scalar_type() &&
                    expanded.device() == weight.device(),
                "gconv_ext: internal error: the kept expanded filter does not match the weight");
  }
  return conv_backward(lifting ? kLifting : kGroup, grad_out, input, weight, rotations, reflections, disk_mask, stride,
                       padding, dilation, output_mask, expanded);
}

TORCH_LIBRARY_IMPL(gconv_ext, CompositeExplicitAutograd, m) {
  m.impl("lifting_conv2d", &conv_forward_kernel<kLifting>);
  m.impl("lifting_conv2d_backward", &conv_backward_kernel<kLifting>);
  m.impl("group_conv2d", &conv_forward_kernel<kGroup>);
  m.impl("group_conv2d_backward", &conv_backward_kernel<kGroup>);
}

}  // namespace gconv_ext
