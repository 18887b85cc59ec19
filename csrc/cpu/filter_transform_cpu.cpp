// CPU loops over the shared per-element filter-transform arithmetic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "gconv_ext/filter_transform.h"
#include "gconv_ext/ops.h"

namespace gconv_ext {

void transform_forward_cpu(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s) {
  const PlanView p = plan.view();
  const int64_t kk = p.kk, gin = s.gin, c_in = s.c_in;
  const int64_t slices = s.c_out * p.order * c_in;  // one (co, g, ci) block = gin * kk outputs
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_transform_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, slices, std::max<int64_t>(1, 16384 / (gin * kk)), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t ci = b % c_in, g = (b / c_in) % p.order, co = b / (c_in * p.order);
        scalar_t* o_ptr = dst + b * gin * kk;
        for (int64_t h = 0; h < gin; ++h) {
          const scalar_t* s_ptr = src + ((co * c_in + ci) * gin + transform_source_slice(p, g, h, gin)) * kk;
          for (int64_t o = 0; o < kk; ++o) o_ptr[h * kk + o] = transform_forward_tap<acc_t>(p, g, o, s_ptr);
        }
      }
    });
  });
}

void transform_backward_cpu(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                            const TransformSizes& s) {
  const PlanView p = plan.view();
  const int64_t kk = p.kk, gin = s.gin, c_in = s.c_in;
  const int64_t slices = s.c_out * c_in;  // one (co, ci) block = gin * kk outputs
  const int64_t stride_g = c_in * gin * kk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gconv_ext_transform_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gout = grad_out.const_data_ptr<scalar_t>();
    scalar_t* gin_ptr = grad_in.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, slices, std::max<int64_t>(1, 16384 / (gin * kk * p.order)), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t ci = b % c_in, co = b / c_in;
        const scalar_t* base = gout + (co * p.order * c_in + ci) * gin * kk;
        scalar_t* o_ptr = gin_ptr + b * gin * kk;
        for (int64_t a = 0; a < gin; ++a)
          for (int64_t t = 0; t < kk; ++t) o_ptr[a * kk + t] = transform_backward_tap<acc_t>(p, a, t, base, stride_g, gin);
      }
    });
  });
}

}  // namespace gconv_ext
