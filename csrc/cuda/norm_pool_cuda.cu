// CUDA launches of the fused layer norm + ReLU + spatial max pool (norm_pool.h): one block per sample for the
// statistics and for the backward's sums (a fixed-shape tree reduction in shared memory: deterministic), and
// grid-stride kernels, one thread per output element (forward) or per input element (backward: the max pool's
// gather over the covering windows, spatial_pool.h, then the layer norm's backward).
#include <ATen/OpMathType.h>

#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/norm_pool.h"
#include "gconv_ext/register.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {
namespace {

// The sum of every thread's `v` over the block (kThreads threads), returned to all of them.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();
  return total;
}

// One block per sample: mean and rstd of its m elements (two passes: the mean, then the biased variance).
template <typename scalar_t>
__global__ void norm_stats_kernel(const scalar_t* __restrict__ x, at::opmath_type<scalar_t>* __restrict__ mean,
                                  at::opmath_type<scalar_t>* __restrict__ rstd, int64_t m, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const scalar_t* xb = x + blockIdx.x * m;
  acc_t s = acc_t(0);
  for (int64_t i = threadIdx.x; i < m; i += kThreads) s += static_cast<acc_t>(xb[i]);
  const acc_t mu = block_sum(s, shared) / static_cast<acc_t>(m);
  acc_t q = acc_t(0);
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const acc_t d = static_cast<acc_t>(xb[i]) - mu;
    q += d * d;
  }
  const acc_t var = block_sum(q, shared) / static_cast<acc_t>(m);
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = mu;
    rstd[blockIdx.x] = norm_rstd(var, static_cast<acc_t>(eps));
  }
}

template <typename scalar_t, typename index_t>
__global__ void norm_pool_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                         index_t* __restrict__ indices, const at::opmath_type<scalar_t>* mean,
                                         const at::opmath_type<scalar_t>* rstd, int64_t n, int64_t per_sample,
                                         Pool2dGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.oh * g.ow;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) {
    const int64_t p = i / per_plane, o = i % per_plane, oy = o / g.ow, ox = o % g.ow, b = p / per_sample;
    int64_t arg;
    const acc_t v = max_pool_window<acc_t>(in + p * g.h * g.w, g, oy, ox, &arg);
    out[i] = static_cast<scalar_t>(norm_relu(v, mean[b], rstd[b]));
    indices[i] = static_cast<index_t>(arg);
  }
}

// One block per sample: c = (s1 / m, s2 / m), from the ReLU-masked gradient of its mo pooled outputs.
template <typename scalar_t>
__global__ void norm_pool_sums_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                                      at::opmath_type<scalar_t>* __restrict__ c, int64_t mo, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const int64_t base = blockIdx.x * mo;
  acc_t s1 = acc_t(0), s2 = acc_t(0);
  for (int64_t i = threadIdx.x; i < mo; i += kThreads) {
    const acc_t ov = static_cast<acc_t>(out[base + i]);
    const acc_t gv = norm_relu_grad(static_cast<acc_t>(grad_out[base + i]), ov);
    s1 += gv;
    s2 += gv * ov;
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  if (threadIdx.x == 0) {
    c[2 * blockIdx.x] = s1 / static_cast<acc_t>(m);
    c[2 * blockIdx.x + 1] = s2 / static_cast<acc_t>(m);
  }
}

template <typename scalar_t, typename index_t>
__global__ void norm_pool_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                                          const index_t* __restrict__ indices, const scalar_t* __restrict__ x,
                                          const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* rstd,
                                          const at::opmath_type<scalar_t>* c, scalar_t* __restrict__ grad_in,
                                          int64_t n, int64_t per_sample, Pool2dGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.h * g.w, per_out = g.oh * g.ow;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) {
    const int64_t p = i / per_plane, q = i % per_plane, y = q / g.w, xx = q % g.w, b = p / per_sample;
    // G (the ReLU-masked gradient routed by the taps) rounded to the input's dtype, as the CPU loops store it
    const scalar_t routed = static_cast<scalar_t>(pool_backward_at<acc_t>(
        grad_out + p * per_out, indices + p * per_out, g, y, xx, out + p * per_out));
    grad_in[i] = static_cast<scalar_t>(norm_input_grad(static_cast<acc_t>(routed), static_cast<acc_t>(x[i]),
                                                       mean[b], rstd[b], c[2 * b], c[2 * b + 1]));
  }
}

void norm_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, at::Tensor& indices, at::Tensor& mean,
                            at::Tensor& rstd, const Pool2dGeom& g, double eps) {
  const int64_t batch = in.size(0), per_sample = planes_of(in) / batch, m = in.numel() / batch, n = out.numel();
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using acc_t = at::opmath_type<scalar_t>;
      norm_stats_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), m, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      norm_pool_forward_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), index_ptr<index_t>(indices),
          mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(), n, per_sample, g);
    });
  });
}

void norm_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& in, const at::Tensor& out,
                             const at::Tensor& indices, const at::Tensor& mean, const at::Tensor& rstd,
                             at::Tensor& grad_in, at::Tensor& c, const Pool2dGeom& g) {
  const int64_t batch = in.size(0), per_sample = planes_of(in) / batch, m = in.numel() / batch, n = in.numel();
  const int64_t mo = out.numel() / batch;
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      using acc_t = at::opmath_type<scalar_t>;
      norm_pool_sums_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), c.mutable_data_ptr<acc_t>(), mo, m);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      norm_pool_backward_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
          static_cast<const index_t*>(index_ptr<index_t>(indices)), in.const_data_ptr<scalar_t>(),
          mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(), c.const_data_ptr<acc_t>(),
          grad_in.mutable_data_ptr<scalar_t>(), n, per_sample, g);
    });
  });
}

constexpr NormPoolLaunchers kCudaNormPool{&norm_pool_forward_cuda, &norm_pool_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CUDA, m) { register_norm_pool<kCudaNormPool>(m); }

}  // namespace gconv_ext
