// Per-element arithmetic of the filter transforms: the one source compiled by both g++ (CPU loops)
// and nvcc (CUDA kernels). Nothing here allocates, launches or knows about devices.
//
// A transform plan (built once per (group, k, disk) by plan.cpp) holds:
//   forward  CSR over rows (g, o) = g * kk + o:   source tap `fwd_src[e]`, weight `fwd_w[e]`
//   backward CSR over input taps t:                (bwd_g[e], bwd_o[e], bwd_w[e]), the transposed map
//   mul[g * G + h] = g h and inv_mul[g * G + h] = g^-1 h (the Cayley table and its left-inverse form).
// Layouts (contiguous):
//   filter  [C_out, C_in, Gin, kk]        (Gin = 1 for lifting, |G| for group filters)
//   output  [C_out, G, C_in, Gin, kk]
//   out[co, g, ci, h, o] = sum_e w_e * filter[co, ci, (Gin == 1 ? 0 : g^-1 h), src_e]
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

// Plan weights in the accumulation type: float plans for float math, double for double.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t plan_weight(const double* w64, const float* w32, int64_t e) {
  return static_cast<acc_t>(w64[e]);
}
template <>
C10_HOST_DEVICE inline float plan_weight<float>(const double* w64, const float* w32, int64_t e) {
  return w32[e];
}

// Output tap o of group element g, from the source filter slice `src` (kk contiguous taps).
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline scalar_t transform_forward_tap(const PlanView& p, int64_t g, int64_t o,
                                                      const scalar_t* __restrict__ src) {
  const int64_t row = g * p.kk + o;
  acc_t acc = acc_t(0);
  for (int32_t e = p.fwd_ptr[row]; e < p.fwd_ptr[row + 1]; ++e) {
    acc += plan_weight<acc_t>(p.fwd_w64, p.fwd_w32, e) * static_cast<acc_t>(src[p.fwd_src[e]]);
  }
  return static_cast<scalar_t>(acc);
}

// The input group slice that feeds output slice (g, h).
C10_HOST_DEVICE inline int64_t transform_source_slice(const PlanView& p, int64_t g, int64_t h, int64_t gin) {
  return gin == 1 ? 0 : p.inv_mul[g * p.order + h];
}

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
  const scalar_t* src = in + ((co * c_in + ci) * gin + transform_source_slice(p, g, h, gin)) * p.kk;
  return transform_forward_tap<acc_t>(p, g, o, src);
}

// Adjoint (backward), input tap t of input group slice a, for one (co, ci):
//   grad_in[co, ci, a, t] = sum_e w_e * grad_out[co, g_e, ci, (Gin == 1 ? 0 : g_e a), o_e]
// `gout` points at grad_out[co, 0, ci, 0, 0]; `stride_g` is the distance between successive g.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline scalar_t transform_backward_tap(const PlanView& p, int64_t a, int64_t t,
                                                       const scalar_t* __restrict__ gout, int64_t stride_g,
                                                       int64_t gin) {
  acc_t acc = acc_t(0);
  for (int32_t e = p.bwd_ptr[t]; e < p.bwd_ptr[t + 1]; ++e) {
    const int64_t g = p.bwd_g[e];
    const int64_t h = gin == 1 ? 0 : p.mul[g * p.order + a];
    acc += plan_weight<acc_t>(p.bwd_w64, p.bwd_w32, e) * static_cast<acc_t>(gout[g * stride_g + h * p.kk + p.bwd_o[e]]);
  }
  return static_cast<scalar_t>(acc);
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
  const int64_t stride_g = c_in * gin * p.kk;
  const scalar_t* gout = grad_out + (co * p.order * c_in + ci) * gin * p.kk;
  return transform_backward_tap<acc_t>(p, a, t, gout, stride_g, gin);
}

}  // namespace gconv_ext
