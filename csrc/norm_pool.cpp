// The fused layer norm + ReLU + spatial max pool of a group map (norm_pool.h): host checks and layout; the
// backends' launchers run the shared per-element arithmetic. The pooling geometry, its checks and the argmax
// taps are the spatial max pool's (spatial_pool.cpp).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "gconv_ext/checks.h"
#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

// mean and rstd are kept in the accumulation type: float32, or float64 for a float64 input.
at::ScalarType stats_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_stats(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(0), "gconv_ext: ", name, " must have shape [",
                    input.size(0), "] (one value per sample of input), got ", t.sizes());
  const at::ScalarType want = stats_dtype(input);
  TORCH_CHECK_TYPE(t.scalar_type() == want, "gconv_ext: ", name, " must be ", dtype_name(want), " for a ",
                   dtype_name(input.scalar_type()), " input, got ", dtype_name(t.scalar_type()));
  TORCH_CHECK(t.device() == input.device(), "gconv_ext: ", name, " and input must be on the same device, got ",
              t.device(), " and ", input.device());
}

void check_pooled(const at::Tensor& t, const char* name, const at::Tensor& input, at::IntArrayRef expected) {
  check_like(t, name, input, "input");
  TORCH_CHECK_VALUE(t.sizes() == expected, "gconv_ext: ", name, " must have the output shape ", expected, ", got ",
                    t.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_relu_max_pool_host(
    const NormPoolLaunchers& run, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, double eps) {
  check_pool_map(input, "input");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "gconv_ext: eps must be a positive finite number, got ", eps);
  const Pool2dGeom g = pool_geometry_of(input, kernel_size, stride, padding);
  const at::Tensor in = input.contiguous();
  const std::vector<int64_t> sizes = pool_output_sizes(input.sizes(), g);
  at::Tensor out = at::empty(sizes, in.options());
  at::Tensor indices = at::empty(sizes, in.options().dtype(pool_index_dtype(g)));
  at::Tensor mean = at::empty({input.size(0)}, in.options().dtype(stats_dtype(input)));
  at::Tensor rstd = at::empty_like(mean);
  if (out.numel() > 0) {
    run.forward(in, out, indices, mean, rstd, g, eps);
  } else {  // samples without elements (C or |G| is 0): statistics of nothing, as torch.var_mean
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {out, indices, mean, rstd};
}

at::Tensor norm_relu_max_pool_backward_host(const NormPoolLaunchers& run, const at::Tensor& grad_out,
                                            const at::Tensor& input, const at::Tensor& out,
                                            const at::Tensor& indices, const at::Tensor& mean,
                                            const at::Tensor& rstd, at::IntArrayRef kernel_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding) {
  check_pool_map(input, "input");
  const Pool2dGeom g = pool_geometry_of(input, kernel_size, stride, padding);
  const std::vector<int64_t> sizes = pool_output_sizes(input.sizes(), g);
  check_pooled(grad_out, "grad_out", input, sizes);
  check_pooled(out, "out", input, sizes);
  check_pool_indices(indices, sizes, g, input.device());
  check_stats(mean, "mean", input);
  check_stats(rstd, "rstd", input);
  const at::Tensor go = grad_out.contiguous(), in = input.contiguous(), o = out.contiguous(),
                   idx = indices.contiguous(), mu = mean.contiguous(), r = rstd.contiguous();
  at::Tensor grad_in = at::empty(in.sizes(), in.options());
  if (grad_in.numel() == 0) return grad_in;
  at::Tensor c = at::empty({input.size(0), 2}, mu.options());
  run.backward(go, in, o, idx, mu, r, grad_in, c, g);
  return grad_in;
}

}  // namespace gconv_ext
