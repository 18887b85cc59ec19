// CUDA launches of the shared per-element spatial-pooling arithmetic (spatial_pool.h): grid-stride
// kernels, one thread per output element (forward, which stores the argmax taps when asked; gather) or per
// input element (backward: a gather over the covering windows, routed by the stored taps; deterministic, no
// atomics), registered for the CUDA dispatch key.
#include <ATen/OpMathType.h>

#include "gconv_ext/cuda_launch.cuh"
#include "gconv_ext/register.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {
namespace {

template <typename scalar_t, typename index_t>
__global__ void spatial_pool_forward_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                            index_t* __restrict__ indices, int64_t n, Pool2dGeom g, bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.oh * g.ow;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) {
    const int64_t p = i / per_plane, o = i % per_plane, oy = o / g.ow, ox = o % g.ow;
    const scalar_t* plane = in + p * g.h * g.w;
    if (max) {
      int64_t arg;
      out[i] = static_cast<scalar_t>(max_pool_window<acc_t>(plane, g, oy, ox, &arg));
      if (indices != nullptr) indices[i] = static_cast<index_t>(arg);
    } else {
      out[i] = static_cast<scalar_t>(avg_pool_window<acc_t>(plane, g, oy, ox));
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void spatial_pool_gather_kernel(const scalar_t* __restrict__ values, const index_t* __restrict__ indices,
                                           scalar_t* __restrict__ out, int64_t n, Pool2dGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.oh * g.ow;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) {
    const int64_t p = i / per_plane, o = i % per_plane, oy = o / g.ow, ox = o % g.ow;
    out[i] = static_cast<scalar_t>(
        pool_tap_value<acc_t>(values + p * g.h * g.w, g, oy, ox, static_cast<int64_t>(indices[i])));
  }
}

template <typename scalar_t, typename index_t>
__global__ void spatial_pool_backward_kernel(const scalar_t* __restrict__ grad_out,
                                             const index_t* __restrict__ indices, scalar_t* __restrict__ grad_in,
                                             int64_t n, Pool2dGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.h * g.w, per_out = g.oh * g.ow;
  GCONV_EXT_GRID_STRIDE_LOOP(i, n) {
    const int64_t p = i / per_plane, q = i % per_plane, y = q / g.w, x = q % g.w;
    grad_in[i] = static_cast<scalar_t>(pool_backward_at<acc_t>(
        grad_out + p * per_out, indices != nullptr ? indices + p * per_out : indices, g, y, x));
  }
}

void spatial_pool_forward_cuda(const at::Tensor& in, at::Tensor& out, const at::Tensor& indices, const Pool2dGeom& g,
                               bool max) {
  const int64_t n = out.numel();
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    launch_elementwise(in, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      spatial_pool_forward_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), index_ptr<index_t>(indices), n, g, max);
    });
  });
}

void spatial_pool_gather_cuda(const at::Tensor& values, const at::Tensor& indices, at::Tensor& out,
                              const Pool2dGeom& g) {
  const int64_t n = out.numel();
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    launch_elementwise(values, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      spatial_pool_gather_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          values.const_data_ptr<scalar_t>(), index_ptr<index_t>(indices), out.mutable_data_ptr<scalar_t>(), n, g);
    });
  });
}

void spatial_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& indices, at::Tensor& grad_in,
                                const Pool2dGeom& g) {
  const int64_t n = grad_in.numel();
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    launch_elementwise(grad_out, n, [&](auto tag, unsigned blocks, cudaStream_t stream) {
      using scalar_t = decltype(tag);
      spatial_pool_backward_kernel<scalar_t, index_t><<<blocks, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), index_ptr<index_t>(indices),
          grad_in.mutable_data_ptr<scalar_t>(), n, g);
    });
  });
}

constexpr SpatialPoolLaunchers kCudaSpatialPool{&spatial_pool_forward_cuda, &spatial_pool_gather_cuda,
                                                &spatial_pool_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CUDA, m) { register_spatial_pool<kCudaSpatialPool>(m); }

}  // namespace gconv_ext
