// Per-element arithmetic of the filter transforms: the one source compiled by both g++ (CPU loops)
// and nvcc (CUDA kernels). Nothing here allocates, launches or knows about devices.
//
// A transform plan (built once per (group, k, disk) by plan.cpp) holds:
//   forward  CSR over rows (g, o) = g * kk + o:   source tap `fwd_src[e]`, weight `fwd_w[e]`
//   backward CSR over input taps t:                (bwd_g[e], bwd_o[e], bwd_w[e]), the transposed map
//   mul[g * G + h] = g h and inv_mul[g * G + h] = g^-1 h (the Cayley table and its left-inverse form).
// Logical layouts:
//   filter  [C_out, C_in, Gin, kk]        (Gin = 1 for lifting, |G| for group filters)
//   output  [C_out, G, C_in, Gin, kk]
//   out[co, g, ci, h, o] = sum_e w_e * filter[co, ci, (Gin == 1 ? 0 : g^-1 h), src_e]
//
// The sums are templates over the accumulator type and over an accessor that reads the source taps,
// so one definition serves every backend: CUDA instantiates them with scalars (one thread per output
// element), the CPU with fixed-width lane vectors (several filters at once, for SIMD).
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace gconv_ext {

struct PlanView {
  const int32_t* fwd_ptr;   // [G * kk + 1]
  const int32_t* fwd_src;   // [nnz]
  const double* fwd_w64;    // [nnz]
  const float* fwd_w32;     // [nnz]
  const int32_t* bwd_ptr;   // [kk + 1]
  const int32_t* bwd_g;     // [nnz]
  const int32_t* bwd_o;     // [nnz]
  const double* bwd_w64;    // [nnz]
  const float* bwd_w32;     // [nnz]
  const int32_t* mul;       // [G * G]
  const int32_t* inv_mul;   // [G * G]
  int64_t order;            // |G|
  int64_t kk;               // k * k
};

// Plan weights in the accumulation precision: float plans for float math, double for double.
template <typename weight_t>
C10_HOST_DEVICE inline weight_t plan_weight(const double* w64, const float* w32, int64_t e) {
  return static_cast<weight_t>(w64[e]);
}
template <>
C10_HOST_DEVICE inline float plan_weight<float>(const double* w64, const float* w32, int64_t e) {
  return w32[e];
}

// The input group slice that feeds output slice (g, h).
C10_HOST_DEVICE inline int64_t transform_source_slice(const PlanView& p, int64_t g, int64_t h, int64_t gin) {
  return gin == 1 ? 0 : p.inv_mul[g * p.order + h];
}

// The output group slice that input slice a of element g lands in (g a), for the adjoint.
C10_HOST_DEVICE inline int64_t transform_target_slice(const PlanView& p, int64_t g, int64_t a, int64_t gin) {
  return gin == 1 ? 0 : p.mul[g * p.order + a];
}

// Output tap o of group element g: sum_e w_e * src(src_e), where src(t) reads tap t of the source slice.
template <typename acc_t, typename weight_t, typename Src>
C10_HOST_DEVICE inline acc_t transform_forward_tap(const PlanView& p, int64_t g, int64_t o, const Src& src) {
  const int64_t row = g * p.kk + o;
  acc_t acc = acc_t(0);
  for (int32_t e = p.fwd_ptr[row]; e < p.fwd_ptr[row + 1]; ++e) {
    acc = acc + acc_t(plan_weight<weight_t>(p.fwd_w64, p.fwd_w32, e)) * src(p.fwd_src[e]);
  }
  return acc;
}

// Adjoint: input tap t of input group slice a:
//   grad_in[.., a, t] = sum_e w_e * gout(g_e, (Gin == 1 ? 0 : g_e a), o_e)
template <typename acc_t, typename weight_t, typename GradOut>
C10_HOST_DEVICE inline acc_t transform_backward_tap(const PlanView& p, int64_t a, int64_t t, int64_t gin,
                                                    const GradOut& gout) {
  acc_t acc = acc_t(0);
  for (int32_t e = p.bwd_ptr[t]; e < p.bwd_ptr[t + 1]; ++e) {
    const int64_t g = p.bwd_g[e];
    acc = acc + acc_t(plan_weight<weight_t>(p.bwd_w64, p.bwd_w32, e)) *
                    gout(g, transform_target_slice(p, g, a, gin), p.bwd_o[e]);
  }
  return acc;
}

// Scalar accessors over the logical (contiguous) layouts.
template <typename acc_t, typename scalar_t>
struct SliceTaps {  // tap t of one filter slice
  const scalar_t* __restrict__ base;
  C10_HOST_DEVICE acc_t operator()(int64_t t) const { return static_cast<acc_t>(base[t]); }
};

template <typename acc_t, typename scalar_t>
struct GroupedTaps {  // grad_out[co, g, ci, h, o] for one (co, ci)
  const scalar_t* __restrict__ base;
  int64_t stride_g, gin, kk;
  C10_HOST_DEVICE acc_t operator()(int64_t g, int64_t h, int64_t o) const {
    return static_cast<acc_t>(base[g * stride_g + h * kk + o]);
  }
};

// Forward, one output element at linear index idx of [C_out, G, C_in, Gin, kk].
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline scalar_t transform_forward_at(const PlanView& p, int64_t idx, const scalar_t* __restrict__ in,
                                                     int64_t c_in, int64_t gin) {
  const int64_t o = idx % p.kk;
  int64_t r = idx / p.kk;
  const int64_t h = r % gin;
  r /= gin;
  const int64_t ci = r % c_in;
  r /= c_in;
  const int64_t g = r % p.order;
  const int64_t co = r / p.order;
  const SliceTaps<acc_t, scalar_t> src{in + ((co * c_in + ci) * gin + transform_source_slice(p, g, h, gin)) * p.kk};
  return static_cast<scalar_t>(transform_forward_tap<acc_t, acc_t>(p, g, o, src));
}

// Backward, one element at linear index idx of grad_in [C_out, C_in, Gin, kk].
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline scalar_t transform_backward_at(const PlanView& p, int64_t idx,
                                                      const scalar_t* __restrict__ grad_out, int64_t c_in,
                                                      int64_t gin) {
  const int64_t t = idx % p.kk;
  int64_t r = idx / p.kk;
  const int64_t a = r % gin;
  r /= gin;
  const int64_t ci = r % c_in;
  const int64_t co = r / c_in;
  const GroupedTaps<acc_t, scalar_t> gout{grad_out + (co * p.order * c_in + ci) * gin * p.kk, c_in * gin * p.kk, gin,
                                          p.kk};
  return static_cast<scalar_t>(transform_backward_tap<acc_t, acc_t>(p, a, t, gin, gout));
}

}  // namespace gconv_ext
