// CUDA launches of the shared per-element group-pooling arithmetic (grid-stride kernels), registered for the
// CUDA dispatch key.
#include <ATen/OpMathType.h>

#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/group_pool.h"
#include "gconv_ext/register.h"

namespace gconv_ext {
namespace {

template <typename scalar_t>
__global__ void group_pool_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t n,
                                          int64_t order, int64_t hw, int64_t gstride, bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) { out[i] = group_pool_forward_at<acc_t>(in, i, order, hw, gstride, max); }
}

template <typename scalar_t>
__global__ void group_pool_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ in,
                                           scalar_t* __restrict__ grad_in, int64_t n, int64_t order, int64_t hw,
                                           int64_t gstride, bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) { group_pool_backward_at<acc_t>(grad_out, in, grad_in, i, order, hw, gstride, max); }
}

void group_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, int64_t gstride,
                             bool max) {
  const int64_t n = out.numel();
  launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    group_pool_forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, order, hw, gstride, max);
  });
}

void group_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order,
                              int64_t hw, int64_t gstride, bool max) {
  const int64_t n = grad_out.numel();
  launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    group_pool_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(), n,
        order, hw, gstride, max);
  });
}

constexpr GroupPoolLaunchers kCudaGroupPool{&group_pool_forward_cuda, &group_pool_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CUDA, m) { register_group_pool<kCudaGroupPool>(m); }

}  // namespace gconv_ext
