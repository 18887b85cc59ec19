// CUDA launches of the shared per-element filter-transform arithmetic (grid-stride kernels), registered for
// the CUDA dispatch key.
#include <ATen/OpMathType.h>

#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/filter_transform.h"
#include "gconv_ext/register.h"

namespace gconv_ext {
namespace {

template <typename scalar_t>
__global__ void transform_forward_kernel(PlanView p, const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                         int64_t n, int64_t c_in, int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) { out[i] = transform_forward_at<acc_t>(p, i, in, c_in, gin); }
}

template <typename scalar_t>
__global__ void transform_backward_kernel(PlanView p, const scalar_t* __restrict__ grad_out,
                                          scalar_t* __restrict__ grad_in, int64_t n, int64_t c_in, int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) { grad_in[i] = transform_backward_at<acc_t>(p, i, grad_out, c_in, gin); }
}

void transform_forward_cuda(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s) {
  const int64_t n = out.numel();
  launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    transform_forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        plan.view(), in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, s.c_in, s.gin);
  });
}

void transform_backward_cuda(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                             const TransformSizes& s) {
  const int64_t n = grad_in.numel();
  launch_elementwise(grad_out, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    transform_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        plan.view(), grad_out.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(), n, s.c_in, s.gin);
  });
}

constexpr TransformLaunchers kCudaTransform{&transform_forward_cuda, &transform_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CUDA, m) { register_filter_transforms<kCudaTransform>(m); }

}  // namespace gconv_ext
