// CUDA launches of the shared per-element filter-transform arithmetic (grid-stride kernels).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "gconv_ext/filter_transform.h"
#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

template <typename scalar_t>
__global__ void transform_forward_kernel(PlanView p, const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                         int64_t n, int64_t c_in, int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    out[i] = transform_forward_at<acc_t>(p, i, in, c_in, gin);
  }
}

template <typename scalar_t>
__global__ void transform_backward_kernel(PlanView p, const scalar_t* __restrict__ grad_out,
                                          scalar_t* __restrict__ grad_in, int64_t n, int64_t c_in, int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    grad_in[i] = transform_backward_at<acc_t>(p, i, grad_out, c_in, gin);
  }
}

}  // namespace

void transform_forward_cuda(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s) {
  const c10::cuda::CUDAGuard guard(in.device());
  const int64_t n = out.numel();
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_transform_forward_cuda", [&] {
    transform_forward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        plan.view(), in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, s.c_in, s.gin);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void transform_backward_cuda(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                             const TransformSizes& s) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t n = grad_in.numel();
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gconv_ext_transform_backward_cuda",
                                  [&] {
    transform_backward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        plan.view(), grad_out.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(), n, s.c_in, s.gin);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gconv_ext
