// CPU launchers of the fused layer norm + ReLU + spatial max pool (norm_pool.h); the loops are pool_planes.inc's
// (compiled per instruction set, cpu_kernels.h).
//
// Forward: the statistics of every sample (samples in parallel), then the max pool with its argmax taps, which
// normalises each pooled value as it stores it (planes in parallel). Backward: the sums s1, s2 of every sample
// (samples in parallel), then the pool's backward, which masks each window's term by the ReLU as it reads it and
// stores the layer norm's backward of each gathered G (planes in parallel). The sums' order is fixed
// (pool_planes.inc): results do not depend on the thread count or the instruction set.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "gconv_ext/norm_pool.h"
#include "gconv_ext/register.h"
#include "cpu_kernels.h"

namespace gconv_ext {
namespace {

template <typename scalar_t, typename index_t>
void forward_impl(const scalar_t* x, scalar_t* out, index_t* indices, at::opmath_type<scalar_t>* mean,
                  at::opmath_type<scalar_t>* rstd, int64_t batch, int64_t planes, const Pool2dGeom& g, double eps) {
  const PoolKernels<scalar_t>& run = cpu_kernels().pool<scalar_t>();
  const int64_t plane = g.h * g.w, per_sample = planes / batch, m = per_sample * plane;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) run.norm_stats(x + b * m, m, eps, mean + b, rstd + b);
  });
  const auto norm_forward = run.template taps<index_t>().norm_forward;
  at::parallel_for(0, planes, plane_grain(plane), [&](int64_t begin, int64_t end) {
    norm_forward(x, out, indices, mean, rstd, per_sample, begin, end, g);
  });
}

template <typename scalar_t, typename index_t>
void backward_impl(const scalar_t* grad_out, const scalar_t* x, const scalar_t* out, const index_t* indices,
                   const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd, scalar_t* grad_in,
                   at::opmath_type<scalar_t>* c, int64_t batch, int64_t planes, const Pool2dGeom& g) {
  const PoolKernels<scalar_t>& run = cpu_kernels().pool<scalar_t>();
  const int64_t plane = g.h * g.w, per_out = g.oh * g.ow, per_sample = planes / batch;
  const int64_t m = per_sample * plane, mo = per_sample * per_out;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) run.norm_grad_sums(grad_out + b * mo, out + b * mo, mo, m, c + 2 * b);
  });
  const auto norm_backward = run.template taps<index_t>().norm_backward;
  at::parallel_for(0, planes, plane_grain(plane), [&](int64_t begin, int64_t end) {
    norm_backward(grad_out, out, indices, x, mean, rstd, c, grad_in, per_sample, begin, end, g);
  });
}

void norm_pool_forward_cpu(const at::Tensor& in, at::Tensor& out, at::Tensor& indices, at::Tensor& mean,
                           at::Tensor& rstd, const Pool2dGeom& g, double eps) {
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_norm_pool_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_impl<scalar_t>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                             index_ptr<index_t>(indices), mean.mutable_data_ptr<acc_t>(),
                             rstd.mutable_data_ptr<acc_t>(), in.size(0), planes_of(in), g, eps);
    });
  });
}

void norm_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& in, const at::Tensor& out,
                            const at::Tensor& indices, const at::Tensor& mean, const at::Tensor& rstd,
                            at::Tensor& grad_in, at::Tensor& c, const Pool2dGeom& g) {
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_norm_pool_backward_cpu",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_impl<scalar_t>(grad_out.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
                              out.const_data_ptr<scalar_t>(), static_cast<const index_t*>(index_ptr<index_t>(indices)),
                              mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(),
                              grad_in.mutable_data_ptr<scalar_t>(), c.mutable_data_ptr<acc_t>(),
                              in.size(0),
                              planes_of(in), g);
    });
  });
}

constexpr NormPoolLaunchers kCpuNormPool{&norm_pool_forward_cpu, &norm_pool_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_norm_pool<kCpuNormPool>(m); }

}  // namespace gconv_ext
