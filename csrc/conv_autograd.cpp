// Autograd of the fused convolutions, in C++ (the Autograd dispatch key): a training step of a small layer
// is dominated by per-call overhead, and the Python autograd layer of torch.library.register_autograd cost
// more than the convolution itself (measured: a 1->4 C4 lifting conv at batch 1 took 70 us without grad and
// 160 us with it). The derivative is the same as before: one call of the backward op's kernel, which returns every
// requested gradient from one at::convolution_backward. When the filter is small (keep_expanded), the forward
// keeps the expanded filter it built and a plain backward reuses it instead of expanding the weight again. The
// backward ops keep their Python autograd (gconv_ext/ops/conv.py), so double and higher backward go through them
// (with a filter expanded again); their fake kernels are in Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ConvBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool, bool, c10::SymIntArrayRef,
    c10::SymIntArrayRef, c10::SymIntArrayRef, std::array<bool, 3>);
using ConvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool, bool,
                          c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymIntArrayRef);

template <bool kLifting>
const c10::TypedOperatorHandle<ConvFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(kLifting ? "gconv_ext::lifting_conv2d" : "gconv_ext::group_conv2d", "")
                             .typed<ConvFn>();
  return op;
}

template <bool kLifting>
const c10::TypedOperatorHandle<ConvBackwardFn>& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(kLifting ? "gconv_ext::lifting_conv2d_backward" : "gconv_ext::group_conv2d_backward", "")
          .typed<ConvBackwardFn>();
  return op;
}

// Whether the forward keeps its expanded filter for the backward, which then does not expand it again (one of the
// three passes over the filter in a training step; at batch 1 the transforms are most of what a layer adds to
// its convolution). Only when the input gradient will be needed (otherwise the backward needs the filter's shape
// alone), with concrete sizes (a symbolic trace goes through the op and its fake kernel), and when the filter,
// |G| times the weight, is at most the size of the input, which is saved anyway, or at most 2^21 elements (8 MB
// in fp32: a C16 16->16 5x5 filter is 1.6M): the extra memory is bounded by what the layer already keeps, or
// small.
inline bool keep_expanded(const at::Tensor& input, const at::Tensor& weight, int64_t rotations, bool reflections) {
  constexpr int64_t kSmallFilter = int64_t{1} << 21;
  if (!at::GradMode::is_enabled() || !input.requires_grad()) return false;
  if (input.unsafeGetTensorImpl()->has_symbolic_sizes_strides() ||
      weight.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    return false;
  }
  const int64_t filter = weight.numel() * group_order(rotations, reflections);
  return filter <= std::max(input.numel(), kSmallFilter);
}

// The autograd node of both convolutions; `Node` is the final class, whose name the graph shows
// (grad_fn=<gconv_ext::LiftingConv2dBackward>).
template <bool kLifting, class Node>
class ConvFunction : public torch::autograd::Function<Node> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections, bool disk_mask,
                            c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                            bool keep) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out, expanded;
    if (keep) {
      out = conv_forward_direct(kLifting, input, weight, bias, rotations, reflections, disk_mask, stride, padding,
                                dilation, &expanded);
    } else {
      out = forward_op<kLifting>().call(input, weight, bias, rotations, reflections, disk_mask, stride, padding,
                                        dilation);
    }
    ctx->save_for_backward({input, weight, expanded});
    ctx->saved_data["rotations"] = rotations;
    ctx->saved_data["reflections"] = reflections;
    ctx->saved_data["disk_mask"] = disk_mask;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);  // one entry per forward argument; the non-tensor ones stay undefined
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    if (!(mask[0] || mask[1] || mask[2])) return out;
    const auto saved = ctx->get_saved_variables();
    const auto stride = ctx->saved_data["stride"].toSymIntVector();
    const auto padding = ctx->saved_data["padding"].toSymIntVector();
    const auto dilation = ctx->saved_data["dilation"].toSymIntVector();
    auto call = [&] {
      std::tie(out[0], out[1], out[2]) = backward_op<kLifting>().call(
          grads[0], saved[0], saved[1], ctx->saved_data["rotations"].toInt(),
          ctx->saved_data["reflections"].toBool(), ctx->saved_data["disk_mask"].toBool(), stride, padding, dilation,
          mask);
    };
    if (at::GradMode::is_enabled()) {
      // create_graph: through the dispatcher with autograd, so that the backward op's own (Python) autograd
      // records the graph for the double backward.
      call();
    } else if (saved[2].defined()) {
      // A plain backward with the forward's expanded filter: the backward op's kernel, given that filter.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out[0], out[1], out[2]) = conv_backward_direct(
          kLifting, grads[0], saved[0], saved[1], saved[2], ctx->saved_data["rotations"].toInt(),
          ctx->saved_data["reflections"].toBool(), ctx->saved_data["disk_mask"].toBool(), stride, padding, dilation,
          mask);
    } else {
      // A plain backward (grad mode off): straight to the kernel, below autograd. The Python autograd layer of
      // the backward op would only check grad mode and redispatch, at a Python call's cost on every step.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      call();
    }
    return out;
  }
};

}  // namespace

struct LiftingConv2dBackward : ConvFunction<true, LiftingConv2dBackward> {};
struct GroupConv2dBackward : ConvFunction<false, GroupConv2dBackward> {};

namespace {

template <class Node>
at::Tensor conv_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  // (decided here: Function::apply runs the forward with grad mode off)
  const bool keep = keep_expanded(input, weight, rotations, reflections);
  return Node::apply(input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation, keep);
}

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, Autograd, m) {
  m.impl("lifting_conv2d", &conv_autograd<LiftingConv2dBackward>);
  m.impl("group_conv2d", &conv_autograd<GroupConv2dBackward>);
}

}  // namespace gconv_ext
