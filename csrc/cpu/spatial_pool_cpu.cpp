// CPU launchers of spatial pooling (spatial_pool.h): the plane loops of pool_planes.inc (compiled per
// instruction set, cpu_kernels.h), planes in parallel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "cpu_kernels.h"
#include "gconv_ext/register.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {
namespace {

template <typename scalar_t, typename index_t>
void forward_impl(const scalar_t* in, scalar_t* out, index_t* indices, int64_t n, const Pool2dGeom& g, bool max) {
  const auto forward = cpu_kernels().pool<scalar_t>().template taps<index_t>().forward;
  at::parallel_for(0, n, plane_grain(g.h * g.w), [&](int64_t begin, int64_t end) {
    forward(in, out, indices, begin, end, g, max);
  });
}

template <typename scalar_t, typename index_t>
void gather_impl(const scalar_t* values, const index_t* indices, scalar_t* out, int64_t n, const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = g.oh * g.ow;
  at::parallel_for(0, n, plane_grain(g.h * g.w), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* vals = values + p * g.h * g.w;
      const index_t* idx = indices + p * per_plane;
      scalar_t* dst = out + p * per_plane;
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          const int64_t o = oy * g.ow + ox;
          dst[o] = narrow<scalar_t>(pool_tap_value<acc_t>(vals, g, oy, ox, static_cast<int64_t>(idx[o])));
        }
      }
    }
  });
}

template <typename scalar_t, typename index_t>
void backward_impl(const scalar_t* grad_out, const index_t* indices, scalar_t* grad_in, int64_t n,
                   const Pool2dGeom& g) {
  const auto backward = cpu_kernels().pool<scalar_t>().template taps<index_t>().backward;
  at::parallel_for(0, n, plane_grain(g.h * g.w), [&](int64_t begin, int64_t end) {
    backward(grad_out, indices, grad_in, begin, end, g);
  });
}

void spatial_pool_forward_cpu(const at::Tensor& in, at::Tensor& out, const at::Tensor& indices, const Pool2dGeom& g,
                              bool max) {
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_spatial_pool_cpu", [&] {
      forward_impl<scalar_t>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                             index_ptr<index_t>(indices), out.numel() / (g.oh * g.ow), g, max);
    });
  });
}

void spatial_pool_gather_cpu(const at::Tensor& values, const at::Tensor& indices, at::Tensor& out,
                             const Pool2dGeom& g) {
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                    "gconv_ext_spatial_pool_gather_cpu", [&] {
      gather_impl<scalar_t>(values.const_data_ptr<scalar_t>(), static_cast<const index_t*>(index_ptr<index_t>(indices)),
                            out.mutable_data_ptr<scalar_t>(), out.numel() / (g.oh * g.ow), g);
    });
  });
}

void spatial_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& indices, at::Tensor& grad_in,
                               const Pool2dGeom& g) {
  with_index_type(indices, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                    "gconv_ext_spatial_pool_backward_cpu", [&] {
      backward_impl<scalar_t>(grad_out.const_data_ptr<scalar_t>(),
                              static_cast<const index_t*>(index_ptr<index_t>(indices)),  // null: avg
                              grad_in.mutable_data_ptr<scalar_t>(), grad_in.numel() / (g.h * g.w), g);
    });
  });
}

constexpr SpatialPoolLaunchers kCpuSpatialPool{&spatial_pool_forward_cpu, &spatial_pool_gather_cpu,
                                               &spatial_pool_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_spatial_pool<kCpuSpatialPool>(m); }

}  // namespace gconv_ext
