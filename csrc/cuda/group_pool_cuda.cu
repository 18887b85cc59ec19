// CUDA launches of the shared per-element group-pooling arithmetic (grid-stride kernels).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "gconv_ext/group_pool.h"
#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

template <typename scalar_t>
__global__ void group_pool_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t n,
                                          int64_t order, int64_t hw, bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    out[i] = group_pool_forward_at<acc_t>(in, i, order, hw, max);
  }
}

template <typename scalar_t>
__global__ void group_pool_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ in,
                                           scalar_t* __restrict__ grad_in, int64_t n, int64_t order, int64_t hw,
                                           bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    group_pool_backward_at<acc_t>(grad_out, in, grad_in, i, order, hw, max);
  }
}

}  // namespace

void group_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, bool max) {
  const c10::cuda::CUDAGuard guard(in.device());
  const int64_t n = out.numel();
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_group_pool_cuda", [&] {
    group_pool_forward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, order, hw, max);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void group_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order,
                              int64_t hw, bool max) {
  const c10::cuda::CUDAGuard guard(in.device());
  const int64_t n = grad_out.numel();
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_group_pool_backward_cuda", [&] {
    group_pool_backward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(), n,
        order, hw, max);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gconv_ext
