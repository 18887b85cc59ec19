// Per-element arithmetic of spatial pooling that keeps the group axis (max or average over k_h x k_w
// windows of every [H, W] plane of a group map [B, C, |G|, H, W]): the one source compiled by both g++
// (CPU loops) and nvcc (CUDA kernels). Layouts (contiguous): input / grad_in [N, H, W] and output /
// grad_out [N, OH, OW], N = the product of all leading dims (each plane is pooled on its own).
//
// Window (oy, ox) covers input rows oy * s_h - p_h + i and columns ox * s_w - p_w + j, 0 <= i < k_h,
// 0 <= j < k_w; its tap index is i * k_w + j (row-major scan order). Out-of-plane taps are padding:
//   max: padding counts as -inf. The argmax is the FIRST tap (scan order) that is strictly greater
//        than everything before it, or the first NaN (a NaN is maximal and propagates, as in torch);
//        when nothing beats -inf it is the first in-plane tap (as in torch's max_pool2d).
//   avg: padding counts as 0 and the divisor is always k_h * k_w (count_include_pad=True).
// The max forward that autograd needs also stores each window's argmax tap (indices [N, OH, OW]: uint8
// when a window has at most 256 taps, int32 otherwise), so the backward never searches a window again.
// Backward, as a gather (deterministic, no atomics):
//   grad_in[y, x] = sum over the windows covering (y, x), in increasing (oy, ox) order, of
//                   max: (indices[oy, ox] == tap of (y, x) ? grad_out[oy, ox] : 0)
//                   avg: grad_out[oy, ox] / (k_h * k_w)
// and its adjoint, the max gather: out[oy, ox] = values[the input element at tap indices[oy, ox]]. A stored
// tap that is not a tap of the window inside the plane (indices not made by the forward) routes nothing and
// gathers 0: no out-of-bounds access whatever the indices hold.
// The CPU loops evaluate exactly these sums in exactly this order (see cpu/pool_planes.inc), so CPU
// and CUDA results agree bit for bit.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>
#include <limits>

namespace gconv_ext {

struct Pool2dGeom {
  int64_t h, w;    // input plane
  int64_t oh, ow;  // output plane: (h + 2 p_h - k_h) / s_h + 1
  int64_t kh, kw, sh, sw, ph, pw;
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t pool_neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// The max rule: does tap value v replace the running maximum `best`? (strictly greater, or the first NaN)
// (cpu/vec.inc has it lane by lane, for the CPU's vector loops: a change here is a change there.)
template <typename acc_t>
C10_HOST_DEVICE inline bool max_pool_takes(acc_t v, acc_t best) {
  return ((v > best) | (v != v)) & (best == best);
}

// First in-plane tap of window (oy, ox): the argmax when no tap beats -inf. (Windows always contain
// one: the host checks p <= k / 2.)
C10_HOST_DEVICE inline int64_t pool_first_tap(const Pool2dGeom& g, int64_t oy, int64_t ox) {
  const int64_t i0 = g.ph - oy * g.sh, j0 = g.pw - ox * g.sw;
  return (i0 > 0 ? i0 : 0) * g.kw + (j0 > 0 ? j0 : 0);
}

// Max over window (oy, ox) of one plane; writes its argmax tap to *arg.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t max_pool_window(const scalar_t* __restrict__ plane, const Pool2dGeom& g, int64_t oy,
                                             int64_t ox, int64_t* arg) {
  acc_t best = pool_neg_inf<acc_t>();
  int64_t a = pool_first_tap(g, oy, ox);
  const int64_t y0 = oy * g.sh - g.ph, x0 = ox * g.sw - g.pw;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t y = y0 + i;
    if (y < 0 || y >= g.h) continue;  // padding: -inf never replaces the maximum
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t x = x0 + j;
      if (x < 0 || x >= g.w) continue;
      const acc_t v = static_cast<acc_t>(plane[y * g.w + x]);
      if (max_pool_takes(v, best)) {
        best = v;
        a = i * g.kw + j;
      }
    }
  }
  *arg = a;
  return best;
}

// Windows of at most this many taps store their argmax taps as uint8, larger ones as int32.
constexpr int64_t kMaxTapsU8 = 256;

// Value of `values` (a plane shaped like the input) at tap `tap` of window (oy, ox); 0 for a tap that is not
// one of the window's in-plane taps (only foreign indices hold those).
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t pool_tap_value(const scalar_t* __restrict__ values, const Pool2dGeom& g, int64_t oy,
                                            int64_t ox, int64_t tap) {
  if (tap < 0 || tap >= g.kh * g.kw) return acc_t(0);
  const int64_t y = oy * g.sh - g.ph + tap / g.kw, x = ox * g.sw - g.pw + tap % g.kw;
  if (y < 0 || y >= g.h || x < 0 || x >= g.w) return acc_t(0);
  return static_cast<acc_t>(values[y * g.w + x]);
}

// Average over window (oy, ox) of one plane: the taps summed in scan order, divided by k_h * k_w.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t avg_pool_window(const scalar_t* __restrict__ plane, const Pool2dGeom& g, int64_t oy,
                                             int64_t ox) {
  acc_t acc = acc_t(0);
  const int64_t y0 = oy * g.sh - g.ph, x0 = ox * g.sw - g.pw;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t y = y0 + i;
    if (y < 0 || y >= g.h) continue;  // padding: adding 0 to a sum that starts at +0 changes nothing
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t x = x0 + j;
      if (x < 0 || x >= g.w) continue;
      acc = acc + static_cast<acc_t>(plane[y * g.w + x]);
    }
  }
  return acc / static_cast<acc_t>(g.kh * g.kw);
}

// Output indices o with o * s - p <= y <= o * s - p + k - 1, clipped to [0, n_out): [*lo, *hi).
C10_HOST_DEVICE inline void pool_covering(int64_t y, int64_t k, int64_t s, int64_t p, int64_t n_out, int64_t* lo,
                                          int64_t* hi) {
  const int64_t top = y + p - k + 1;  // o >= ceil(top / s); y + p >= 0 always
  int64_t l = top <= 0 ? 0 : (top + s - 1) / s;
  int64_t u = (y + p) / s + 1;
  *lo = l;
  *hi = u < n_out ? u : n_out;
}

// grad_in at input (y, x) of one plane: max, routed by the stored argmax taps `indices` ([OH, OW] of the
// plane); avg (`indices` null): an equal share of every covering window's gradient. With `relu_out` (the fused
// norm + pool's output, [OH, OW] of the plane), a window's gradient counts only where relu_out > 0.
template <typename acc_t, typename scalar_t, typename index_t>
C10_HOST_DEVICE inline acc_t pool_backward_at(const scalar_t* __restrict__ grad_out,
                                              const index_t* __restrict__ indices, const Pool2dGeom& g, int64_t y,
                                              int64_t x, const scalar_t* __restrict__ relu_out = nullptr) {
  int64_t oy0, oy1, ox0, ox1;
  pool_covering(y, g.kh, g.sh, g.ph, g.oh, &oy0, &oy1);
  pool_covering(x, g.kw, g.sw, g.pw, g.ow, &ox0, &ox1);
  const acc_t area = static_cast<acc_t>(g.kh * g.kw);
  acc_t acc = acc_t(0);
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    for (int64_t ox = ox0; ox < ox1; ++ox) {
      acc_t go = static_cast<acc_t>(grad_out[oy * g.ow + ox]);
      if (relu_out != nullptr && !(static_cast<acc_t>(relu_out[oy * g.ow + ox]) > acc_t(0))) go = acc_t(0);
      if (indices != nullptr) {
        const int64_t tap = (y - oy * g.sh + g.ph) * g.kw + (x - ox * g.sw + g.pw);
        acc = acc + (static_cast<int64_t>(indices[oy * g.ow + ox]) == tap ? go : acc_t(0));
      } else {
        acc = acc + go / area;
      }
    }
  }
  return acc;
}

}  // namespace gconv_ext
