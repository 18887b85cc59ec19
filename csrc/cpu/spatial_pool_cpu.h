// The CPU loops of spatial pooling (spatial_pool.h) over a range of [H, W] planes, run serially by the caller's
// thread: spatial_pool_cpu.cpp runs them over all planes in parallel, norm_pool_cpu.cpp over the planes of one
// sample at a time.
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
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "convert_cpu.h"
#include "cpu_kernels.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {
namespace pool_cpu {

// at::parallel_for grain for loops over planes of plane_size elements: about 16K elements per task.
inline int64_t plane_grain(int64_t plane_size) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_size));
}

inline Flat flat_of(const Pool2dGeom& g) {
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
    for (int64_t x = 0; x < cols; ++x) dst[x] = widen(src[x]);
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

// The default hooks of forward_planes / backward_planes (see there): each is asked once per plane for a
// function of the values of that plane.
struct PlainPool {
  // forward: a max value v (acc_t) is stored as scalar_t(v)
  template <typename scalar_t>
  auto store(int64_t /*plane*/) const {
    return [](auto v) { return narrow<scalar_t>(v); };
  }
  // backward: the term of output o is grad_out's value
  auto term(int64_t /*plane*/) const {
    return [](int64_t /*o*/, auto go) { return go; };
  }
  // backward: input element q receives G (rounded to scalar_t) as it is
  auto grad(int64_t /*plane*/) const {
    return [](int64_t /*q*/, auto routed) { return routed; };
  }
};

// Planes [begin, end) of `in` into `out`; with `indices` (a max forward for autograd) also the argmax tap of
// every window. A max value v of plane p is stored as hooks.store<scalar_t>(p)(v) (a cast by default; the fused
// norm + pool normalises it there).
template <typename scalar_t, typename index_t, typename Hooks = PlainPool>
void forward_planes(const scalar_t* in, scalar_t* out, index_t* indices, int64_t begin, int64_t end,
                    const Pool2dGeom& g, bool max, const Hooks& hooks = Hooks()) {
  using acc_t = at::opmath_type<scalar_t>;
  using idx_t = tap_t<acc_t>;
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const Flat t = flat_of(g);
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
    const auto store = hooks.template store<scalar_t>(p);
    for (int64_t oy = 0; oy < g.oh; ++oy, dst += g.ow) {
      const acc_t* __restrict__ r = res.data() + oy * t.pitch;
      if (max) {
        for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = store(r[ox]);
      } else {
        for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox] = narrow<scalar_t>(r[ox] / area);
      }
    }
    if (indices != nullptr) {
      // The sizes in locals: a uint8_t store may alias anything, so a loop bound read through `g` would be
      // reloaded after every store and the loop would not vectorise.
      const int64_t oh = g.oh, ow = g.ow, pitch = t.pitch;
      index_t* __restrict__ di = indices + p * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy, di += ow) {
        const idx_t* __restrict__ a = arg.data() + oy * pitch;
        for (int64_t ox = 0; ox < ow; ++ox) di[ox] = static_cast<index_t>(a[ox]);
      }
    }
  }
}

// Backward of planes [begin, end) (a gather over the tile, see the top): max routes each window's term to its
// stored tap (`indices`), avg (`indices` null) to every tap. The term of output o of plane p is term(o,
// grad_out value) with term = hooks.term(p) (the fused norm + pool masks it by the ReLU there), and input
// element q of plane p gets grad(q, G) with grad = hooks.grad(p) and G rounded to scalar_t (the fused norm +
// pool adds the layer norm's backward there).
template <typename scalar_t, typename index_t, typename Hooks = PlainPool>
void backward_planes(const scalar_t* grad_out, const index_t* indices, scalar_t* grad_in, int64_t begin,
                     int64_t end, const Pool2dGeom& g, const Hooks& hooks = Hooks()) {
  using acc_t = at::opmath_type<scalar_t>;
  using idx_t = tap_t<acc_t>;
  const bool max = indices != nullptr;
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const Flat t = flat_of(g);
  std::vector<acc_t> grad(t.size()), term(t.count, acc_t(0));  // scratch positions stay 0
  std::vector<idx_t> arg(max ? t.count : 0, idx_t(0));
  const acc_t area = static_cast<acc_t>(g.kh * g.kw);
  for (int64_t p = begin; p < end; ++p) {
    const scalar_t* __restrict__ go = grad_out + p * g.oh * g.ow;
    const index_t* __restrict__ ix = max ? indices + p * g.oh * g.ow : nullptr;
    const auto term_of = hooks.term(p);
    const auto grad_of = hooks.grad(p);
    for (int64_t oy = 0; oy < g.oh; ++oy, go += g.ow) {
      acc_t* __restrict__ tr = term.data() + oy * t.pitch;
      if (max) {
        idx_t* __restrict__ a = arg.data() + oy * t.pitch;
        for (int64_t ox = 0; ox < g.ow; ++ox) {
          tr[ox] = term_of(oy * g.ow + ox, widen(go[ox]));
          a[ox] = static_cast<idx_t>(ix[oy * g.ow + ox]);
        }
      } else {
        for (int64_t ox = 0; ox < g.ow; ++ox) tr[ox] = widen(go[ox]) / area;
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
        for (int64_t x = 0; x < g.w; ++x) out[x] = grad_of(y * g.w + x, scalar_t(0));
        continue;
      }
      const acc_t* __restrict__ src = grad.data() + ty * t.cols + g.pw;
      for (int64_t x = 0; x < cols; ++x) out[x] = grad_of(y * g.w + x, narrow<scalar_t>(src[x]));
      for (int64_t x = cols; x < g.w; ++x) out[x] = grad_of(y * g.w + x, scalar_t(0));
    }
  }
}

}  // namespace pool_cpu
}  // namespace gconv_ext
