// Autograd of the fused layer norm + ReLU + max pool, in C++ (the Autograd dispatch key), as for the
// convolutions (conv_autograd.cpp): the GCNN runs this op after every convolution, and the Python autograd layer
// of torch.library.register_autograd cost more than the op itself on small maps (measured on [2, 2, 4, 6, 6],
// forward + backward: 48 us through it, 31 us through this file, 20-21 us for the two kernels alone; torch's
// LayerNorm + ReLU 23-30 us).
// A plain backward is one call of the backward op's kernel. Under create_graph the gradient is built from
// differentiable ops instead (the spatial pool's backward and gather, and torch's own), so it can be
// differentiated again: the formula of norm_pool.h, with the statistics recomputed from the input so that they
// are differentiated too. The backward op itself is not differentiable (its Python autograd says so).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <numeric>
#include <tuple>
#include <vector>

namespace gconv_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using NormPoolFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef,
                                                                            at::IntArrayRef, at::IntArrayRef, double);
using NormPoolBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                      at::IntArrayRef);
using PoolBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                                  at::IntArrayRef, at::IntArrayRef);
using GatherFn = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef);

template <typename Fn>
const c10::TypedOperatorHandle<Fn>& op_handle(const char* name) {
  // one handle per Fn: each signature below belongs to exactly one operator
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
  return op;
}

const c10::TypedOperatorHandle<NormPoolFn>& forward_op() {
  return op_handle<NormPoolFn>("gconv_ext::group_layer_norm_relu_max_pool2d");
}
const c10::TypedOperatorHandle<NormPoolBackwardFn>& backward_op() {
  return op_handle<NormPoolBackwardFn>("gconv_ext::group_layer_norm_relu_max_pool2d_backward");
}

// The input gradient from differentiable ops (create_graph): grad_in = rstd (G - s1 / M - xhat s2 / M), with
// gm = grad_out where the output is positive, s1 = sum gm, s2 = sum gm * out and G the pool's backward of gm.
at::Tensor composite_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& indices,
                          at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, double eps) {
  std::vector<int64_t> dims(input.dim() - 1);
  std::iota(dims.begin(), dims.end(), 1);
  const double m = static_cast<double>(input.numel() / std::max<int64_t>(1, input.size(0)));
  const auto [var, mean] = at::var_mean(input, dims, /*correction=*/0, /*keepdim=*/true);
  const at::Tensor rstd = at::rsqrt(var + eps);
  const at::Tensor xhat = (input - mean) * rstd;
  const at::Tensor phat =
      op_handle<GatherFn>("gconv_ext::group_max_pool2d_gather").call(xhat, indices, k, s, p);
  const at::Tensor gm = grad_out * (phat > 0);
  const at::Tensor s1 = gm.sum(dims, /*keepdim=*/true), s2 = (gm * phat).sum(dims, /*keepdim=*/true);
  const at::Tensor routed = op_handle<PoolBackwardFn>("gconv_ext::group_max_pool2d_backward")
                                .call(gm, indices, input.sym_sizes(), k, s, p);
  return rstd * (routed - s1 / m - xhat * (s2 / m));
}

}  // namespace

// The autograd node (grad_fn=<gconv_ext::GroupLayerNormReluMaxPool2dBackward>).
struct GroupLayerNormReluMaxPool2dBackward : public torch::autograd::Function<GroupLayerNormReluMaxPool2dBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, indices, mean, rstd] = forward_op().call(input, kernel_size, stride, padding, eps);
    ctx->save_for_backward({input, out, indices, mean, rstd});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({indices, mean, rstd});  // saved statistics, not differentiable outputs
    // Their gradients stay undefined rather than zero-filled: the taps alone are as large as the output (measured:
    // 0.12 ms of fills in a GCNN step), and the backward reads none of them.
    ctx->set_materialize_grads(false);
    return {out, indices, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list res(5);  // one entry per forward argument; the non-tensor ones stay undefined
    if (!ctx->needs_input_grad(0) || !grads[0].defined()) return res;
    const auto saved = ctx->get_saved_variables();
    const auto k = ctx->saved_data["kernel_size"].toIntVector();
    const auto s = ctx->saved_data["stride"].toIntVector();
    const auto p = ctx->saved_data["padding"].toIntVector();
    if (at::GradMode::is_enabled()) {
      res[0] = composite_grad(grads[0], saved[0], saved[2], k, s, p, ctx->saved_data["eps"].toDouble());
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      res[0] = backward_op().call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], k, s, p);
    }
    return res;
  }
};

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_pool_autograd(const at::Tensor& input,
                                                                             at::IntArrayRef kernel_size,
                                                                             at::IntArrayRef stride,
                                                                             at::IntArrayRef padding, double eps) {
  const variable_list out = GroupLayerNormReluMaxPool2dBackward::apply(input, kernel_size, stride, padding, eps);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, Autograd, m) {
  m.impl("group_layer_norm_relu_max_pool2d", &norm_pool_autograd);
}

}  // namespace gconv_ext
