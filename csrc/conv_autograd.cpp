// Autograd of the fused convolutions, in C++ (the Autograd dispatch key): a training step of a small layer
// is dominated by per-call overhead, and the Python autograd layer of torch.library.register_autograd cost
// more than the convolution itself (measured: a 1->4 C4 lifting conv at batch 1 took 70 us without grad and
// 160 us with it). The derivative is the same as before: one call of the backward op, which returns every
// requested gradient from one at::convolution_backward. The backward ops keep their Python autograd
// (gconv_ext/ops/conv.py), so double and higher backward go through them; their fake kernels are in Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

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

// The autograd node of both convolutions; `Node` is the final class, whose name the graph shows
// (grad_fn=<gconv_ext::LiftingConv2dBackward>).
template <bool kLifting, class Node>
class ConvFunction : public torch::autograd::Function<Node> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections, bool disk_mask,
                            c10::SymIntArrayRef stride, c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["rotations"] = rotations;
    ctx->saved_data["reflections"] = reflections;
    ctx->saved_data["disk_mask"] = disk_mask;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op<kLifting>().call(input, weight, bias, rotations, reflections, disk_mask, stride, padding,
                                       dilation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);  // one entry per forward argument; the non-tensor ones stay undefined
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
  return Node::apply(input, weight, bias, rotations, reflections, disk_mask, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, Autograd, m) {
  m.impl("lifting_conv2d", &conv_autograd<LiftingConv2dBackward>);
  m.impl("group_conv2d", &conv_autograd<GroupConv2dBackward>);
}

}  // namespace gconv_ext
