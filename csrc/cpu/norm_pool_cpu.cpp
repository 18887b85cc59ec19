// CPU loops of the fused layer norm + ReLU + spatial max pool (norm_pool.h).
//
// Forward: the statistics of every sample (samples in parallel), then the max pool of spatial_pool_cpu.h with
// its argmax taps, which normalises each pooled value as it stores it (planes in parallel). Backward: the sums
// s1, s2 of every sample (samples in parallel), then the pool's backward, which masks each window's term by the
// ReLU as it reads it and stores the layer norm's backward of each gathered G (planes in parallel). One pass
// over the input and one over the output each way, besides the statistics. The sums run in kLanes interleaved
// partial sums (element i goes to lane i mod kLanes, the lanes are added in order at the end), which the compiler
// vectorises and which fixes the summation order: the results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "gconv_ext/norm_pool.h"
#include "gconv_ext/register.h"
#include "spatial_pool_cpu.h"

namespace gconv_ext {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kChunk = 64 * kLanes;  // elements per chunk of the backward sums

// sum_i f(x[i]) over n elements, in kLanes interleaved partial sums.
template <typename acc_t, typename scalar_t, typename F>
acc_t lane_sum(const scalar_t* __restrict__ x, int64_t n, const F& f) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    acc_t v[kLanes];
    for (int l = 0; l < kLanes; ++l) v[l] = widen(x[i + l]);
    for (int l = 0; l < kLanes; ++l) lane[l] += f(v[l]);
  }
  for (int l = 0; i < n; ++i, ++l) lane[l] += f(widen(x[i]));
  acc_t s = acc_t(0);
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// The pool's hooks (spatial_pool_cpu.h) that make it the fused op: the forward normalises and rectifies each
// pooled value as it stores it; the backward masks each window's term by the ReLU and stores the layer norm's
// backward of each gathered G.
template <typename scalar_t>
struct NormPoolHooks {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* mean;
  const acc_t* rstd;
  const acc_t* c;          // backward: s1 / M, s2 / M per sample
  const scalar_t* x;       // backward: the input
  const scalar_t* out;     // backward: the forward's output
  int64_t per_sample, plane, per_out;

  template <typename st>
  auto store(int64_t p) const {
    const acc_t mu = mean[p / per_sample], r = rstd[p / per_sample];
    return [mu, r](acc_t v) { return narrow<st>(norm_relu(v, mu, r)); };
  }
  auto term(int64_t p) const {
    const scalar_t* __restrict__ o = out + p * per_out;
    return [o](int64_t i, acc_t go) { return norm_relu_grad(go, widen(o[i])); };
  }
  auto grad(int64_t p) const {
    const int64_t b = p / per_sample;
    const acc_t mu = mean[b], r = rstd[b], c1 = c[2 * b], c2 = c[2 * b + 1];
    const scalar_t* __restrict__ xp = x + p * plane;
    return [=](int64_t q, scalar_t routed) {
      return narrow<scalar_t>(norm_input_grad(widen(routed), widen(xp[q]), mu, r, c1, c2));
    };
  }
};

template <typename scalar_t, typename index_t>
void forward_impl(const scalar_t* x, scalar_t* out, index_t* indices, at::opmath_type<scalar_t>* mean,
                  at::opmath_type<scalar_t>* rstd, int64_t batch, int64_t planes, const Pool2dGeom& g, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = g.h * g.w, per_sample = planes / batch, m = per_sample * plane;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* xb = x + b * m;
      const acc_t mu = lane_sum<acc_t>(xb, m, [](acc_t v) { return v; }) / static_cast<acc_t>(m);
      const acc_t var = lane_sum<acc_t>(xb, m, [mu](acc_t v) { return (v - mu) * (v - mu); }) / static_cast<acc_t>(m);
      mean[b] = mu;
      rstd[b] = norm_rstd(var, static_cast<acc_t>(eps));
    }
  });
  const NormPoolHooks<scalar_t> hooks{mean, rstd, nullptr, nullptr, nullptr, per_sample, plane, g.oh * g.ow};
  at::parallel_for(0, planes, pool_cpu::plane_grain(plane), [&](int64_t begin, int64_t end) {
    pool_cpu::forward_planes(x, out, indices, begin, end, g, /*max=*/true, hooks);
  });
}

template <typename scalar_t, typename index_t>
void backward_impl(const scalar_t* grad_out, const scalar_t* x, const scalar_t* out, const index_t* indices,
                   const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd, scalar_t* grad_in,
                   at::opmath_type<scalar_t>* c, int64_t batch, int64_t planes, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = g.h * g.w, per_out = g.oh * g.ow, per_sample = planes / batch;
  const int64_t m = per_sample * plane, mo = per_sample * per_out;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* __restrict__ go = grad_out + b * mo;
      const scalar_t* __restrict__ o = out + b * mo;
      // In chunks: the masked gradient and the output of a chunk first (a plain loop, which gcc vectorises; inside
      // the lane loop it leaves the select scalar), then the lane sums over the chunk. Chunks start at multiples
      // of kLanes, so element i still goes to lane i mod kLanes.
      acc_t l1[kLanes] = {}, l2[kLanes] = {}, gm[kChunk], ov[kChunk];
      for (int64_t c0 = 0; c0 < mo; c0 += kChunk) {
        const int64_t n = std::min(kChunk, mo - c0);
        for (int64_t j = 0; j < n; ++j) {
          ov[j] = widen(o[c0 + j]);
          gm[j] = norm_relu_grad(widen(go[c0 + j]), ov[j]);
        }
        int64_t j = 0;
        for (; j + kLanes <= n; j += kLanes) {
          for (int l = 0; l < kLanes; ++l) l1[l] += gm[j + l];
          for (int l = 0; l < kLanes; ++l) l2[l] += gm[j + l] * ov[j + l];
        }
        for (int l = 0; j < n; ++j, ++l) {
          l1[l] += gm[j];
          l2[l] += gm[j] * ov[j];
        }
      }
      acc_t s1 = acc_t(0), s2 = acc_t(0);
      for (int l = 0; l < kLanes; ++l) {
        s1 += l1[l];
        s2 += l2[l];
      }
      c[2 * b] = s1 / static_cast<acc_t>(m);
      c[2 * b + 1] = s2 / static_cast<acc_t>(m);
    }
  });
  const NormPoolHooks<scalar_t> hooks{mean, rstd, c, x, out, per_sample, plane, per_out};
  at::parallel_for(0, planes, pool_cpu::plane_grain(plane), [&](int64_t begin, int64_t end) {
    pool_cpu::backward_planes(grad_out, indices, grad_in, begin, end, g, hooks);
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
                              grad_in.mutable_data_ptr<scalar_t>(), c.mutable_data_ptr<acc_t>(), in.size(0),
                              planes_of(in), g);
    });
  });
}

constexpr NormPoolLaunchers kCpuNormPool{&norm_pool_forward_cpu, &norm_pool_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_norm_pool<kCpuNormPool>(m); }

}  // namespace gconv_ext
