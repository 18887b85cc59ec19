// CPU loops over the shared per-element group-pooling arithmetic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "gconv_ext/group_pool.h"
#include "gconv_ext/register.h"

namespace gconv_ext {

namespace {

void group_pool_forward_cpu(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, int64_t gstride,
                            bool max) {
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_group_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 32768 / order), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dst[i] = group_pool_forward_at<acc_t>(src, i, order, hw, gstride, max);
    });
  });
}

void group_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order,
                             int64_t hw, int64_t gstride, bool max) {
  const int64_t n = grad_out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_group_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 32768 / order), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) group_pool_backward_at<acc_t>(go, x, gi, i, order, hw, gstride, max);
    });
  });
}

constexpr GroupPoolLaunchers kCpuGroupPool{&group_pool_forward_cpu, &group_pool_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_group_pool<kCpuGroupPool>(m); }

}  // namespace gconv_ext
