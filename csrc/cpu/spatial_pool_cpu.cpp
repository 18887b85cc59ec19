// CPU loops of spatial pooling (spatial_pool.h), one [H, W] plane at a time, planes in parallel.
//
// Each plane is copied (in the accumulation type) into a padded tile whose border holds the padding
// value (-inf for max, 0 for avg), so the window taps need no bounds checks. The outputs of a plane are
// then computed all at once on a flat index f = oy * P + ox with the output pitch P = s_h * C / s_w (the
// tile has C columns, a multiple of s_w): window f starts at tile element f * s_w, so for a fixed tap
// (i, j) the loop over f reads tile[f * s_w + i * C + j] and is a long branch-free select / add loop
// that gcc vectorises at -O3 (those tap loops are in cpu_kernels.inc, built per instruction set). Flat
// positions with ox >= OW are scratch (computed, never stored; their backward terms are 0). The loops
// evaluate the sums of spatial_pool.h in the same order:
//   forward: taps in scan order, per output; padding taps are -inf (never taken by max_pool_takes) or
//            +0 (adding +0 to a sum that starts at +0 is exact);
//   backward (a gather, max routed by the stored argmax taps): tile element q receives the terms of the
//            windows covering it in increasing (oy, ox) order, because the tap passes run i descending,
//            then j descending (for a fixed q, i fixes oy = (row(q) - i) / s_h and j fixes ox); each pass
//            writes distinct elements, and the scratch terms add an exact +0.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "gconv_ext/register.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {
namespace {

Flat flat_of(const Pool2dGeom& g) {
  Flat f;
  f.rows = (g.oh - 1) * g.sh + g.kh;
  f.cols = ((g.ow - 1) * g.sw + g.kw + g.sw - 1) / g.sw * g.sw;
  f.pitch = g.sh * f.cols / g.sw;
  f.count = (g.oh - 1) * f.pitch + g.ow;
  return f;
}

// tile <- plane (cast to acc_t), at offset (p_h, p_w); the border keeps the value it was filled with.
template <typename acc_t, typename scalar_t>
void load_tile(const scalar_t* __restrict__ plane, const Pool2dGeom& g, const Flat& t, acc_t* __restrict__ tile) {
  const int64_t rows = std::min(g.h, t.rows - g.ph), cols = std::min(g.w, t.cols - g.pw);
  for (int64_t y = 0; y < rows; ++y) {
    const scalar_t* __restrict__ src = plane + y * g.w;
    acc_t* __restrict__ dst = tile + (y + g.ph) * t.cols + g.pw;
    for (int64_t x = 0; x < cols; ++x) dst[x] = static_cast<acc_t>(src[x]);
  }
}

// The argmax before any tap is taken (first in-plane tap) at every flat position.
template <typename idx_t>
std::vector<idx_t> first_taps(const Pool2dGeom& g, const Flat& t) {
  std::vector<idx_t> first(t.count, 0);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    for (int64_t ox = 0; ox < g.ow; ++ox) first[oy * t.pitch + ox] = static_cast<idx_t>(pool_first_tap(g, oy, ox));
  }
  return first;
}

int64_t plane_grain(int64_t plane_size) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_size)); }

// Forward; with `indices` (a max forward for autograd) also the argmax tap of every window.
template <typename scalar_t, typename index_t>
void forward_impl(const scalar_t* in, scalar_t* out, index_t* indices, int64_t n, const Pool2dGeom& g, bool max) {
  using acc_t = at::opmath_type<scalar_t>;
  using idx_t = tap_t<acc_t>;
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const Flat t = flat_of(g);
  at::parallel_for(0, n, plane_grain(g.h * g.w), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(t.size(), max ? pool_neg_inf<acc_t>() : acc_t(0)), res(t.count);
    const std::vector<idx_t> first = indices != nullptr ? first_taps<idx_t>(g, t) : std::vector<idx_t>();
    std::vector<idx_t> arg(first);
    const acc_t area = static_cast<acc_t>(g.kh * g.kw);
    for (int64_t p = begin; p < end; ++p) {
      load_tile(in + p * g.h * g.w, g, t, tile.data());
      if (max && indices != nullptr) {
        std::memcpy(arg.data(), first.data(), t.count * sizeof(idx_t));
        run.pool_max(tile.data(), g, t, res.data(), arg.data());
      } else if (max) {
        run.pool_max(tile.data(), g, t, res.data(), nullptr);  // the value alone needs no argmax
      } else {
        run.pool_sum(tile.data(), g, t, res.data());
      }
      scalar_t* __restrict__ dst = out + p * g.oh * g.ow;
      for (int64_t oy = 0; oy < g.oh; ++oy, dst += g.ow) {
        const acc_t* __restrict__ r = res.data() + oy * t.pitch;
        if (max) {
          for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = static_cast<scalar_t>(r[ox]);
        } else {
          for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = static_cast<scalar_t>(r[ox] / area);
        }
      }
      if (indices != nullptr) {
        index_t* __restrict__ di = indices + p * g.oh * g.ow;
        for (int64_t oy = 0; oy < g.oh; ++oy, di += g.ow) {
          const idx_t* __restrict__ a = arg.data() + oy * t.pitch;
          for (int64_t ox = 0; ox < g.ow; ++ox) di[ox] = static_cast<index_t>(a[ox]);
        }
      }
    }
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
          dst[o] = static_cast<scalar_t>(pool_tap_value<acc_t>(vals, g, oy, ox, static_cast<int64_t>(idx[o])));
        }
      }
    }
  });
}

// Backward (a gather over the tile, see the top): max routes each window's term to its stored tap (`indices`),
// avg (`indices` null) to every tap.
template <typename scalar_t, typename index_t>
void backward_impl(const scalar_t* grad_out, const index_t* indices, scalar_t* grad_in, int64_t n,
                   const Pool2dGeom& g) {
  using acc_t = at::opmath_type<scalar_t>;
  using idx_t = tap_t<acc_t>;
  const bool max = indices != nullptr;
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const Flat t = flat_of(g);
  at::parallel_for(0, n, plane_grain(g.h * g.w), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad(t.size()), term(t.count, acc_t(0));  // scratch positions stay 0
    std::vector<idx_t> arg(max ? t.count : 0, idx_t(0));
    const acc_t area = static_cast<acc_t>(g.kh * g.kw);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* __restrict__ go = grad_out + p * g.oh * g.ow;
      const index_t* __restrict__ ix = max ? indices + p * g.oh * g.ow : nullptr;
      for (int64_t oy = 0; oy < g.oh; ++oy, go += g.ow) {
        acc_t* __restrict__ tr = term.data() + oy * t.pitch;
        if (max) {
          idx_t* __restrict__ a = arg.data() + oy * t.pitch;
          for (int64_t ox = 0; ox < g.ow; ++ox) {
            tr[ox] = static_cast<acc_t>(go[ox]);
            a[ox] = static_cast<idx_t>(ix[oy * g.ow + ox]);
          }
        } else {
          for (int64_t ox = 0; ox < g.ow; ++ox) tr[ox] = static_cast<acc_t>(go[ox]) / area;
        }
      }
      std::fill(grad.begin(), grad.end(), acc_t(0));
      run.pool_scatter(term.data(), max ? arg.data() : nullptr, g, t, grad.data());
      // grad_in = the tile's interior; rows / columns that no window reaches get 0.
      scalar_t* __restrict__ out = grad_in + p * g.h * g.w;
      const int64_t cols = std::min(g.w, t.cols - g.pw);
      for (int64_t y = 0; y < g.h; ++y, out += g.w) {
        const int64_t ty = y + g.ph;
        if (ty >= t.rows) {
          std::fill(out, out + g.w, scalar_t(0));
          continue;
        }
        const acc_t* __restrict__ src = grad.data() + ty * t.cols + g.pw;
        for (int64_t x = 0; x < cols; ++x) out[x] = static_cast<scalar_t>(src[x]);
        for (int64_t x = cols; x < g.w; ++x) out[x] = scalar_t(0);
      }
    }
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
