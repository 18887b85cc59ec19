// Per-element arithmetic of the fused layer norm + ReLU + spatial max pool of a group map (the GCNN block
// after each convolution): out = max_pool(relu(layer_norm(x))), the layer norm affine-free over all the
// elements of a sample (C, |G|, H, W; biased variance, as torch.nn.functional.layer_norm), the pool over every
// [H, W] plane (spatial_pool.h). The one source of the arithmetic, compiled by both g++ (cpu/norm_pool_cpu.cpp)
// and nvcc (cuda/norm_pool_cuda.cu); the loops and reductions around it are the backends'.
//
// v -> relu((v - mean) * rstd) is non-decreasing (rstd > 0), so it commutes with the max: the op pools the raw
// input (the argmax taps stored, as group_max_pool2d_with_indices) and normalises only the pooled values,
//   out[o] = relu((x[tap of o] - mean) * rstd),   mean, rstd = 1 / sqrt(var + eps): the sample's statistics.
// The pooled value is an input element, exactly, so the order of pool and normalisation changes no rounding.
// Backward, per sample of M elements: gm[o] = grad_out[o] where out[o] > 0, else 0 (the ReLU's backward);
// s1 = sum_o gm[o], s2 = sum_o gm[o] * out[o]; G = the max pool's backward of gm (routed by the taps); then
//   grad_in[i] = rstd * (G[i] - s1 / M - xhat[i] * s2 / M),   xhat[i] = (x[i] - mean) * rstd,
// which is the layer norm's backward for dL/dxhat = G (G lives on the taps, where xhat = out when gm != 0, so
// sum_i G[i] xhat[i] = s2). G is rounded to the input's dtype before this last step, as it is when the three
// ops run one after another. Neither backend stores gm: the pool's backward masks each window's gradient by
// out > 0 as it reads it (pool_backward_at's relu_out; the CPU plane loop's, pool_planes.inc).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace gconv_ext {

// (The CPU's vector loops have norm_relu, norm_relu_grad and norm_input_grad lane by lane too, in
// cpu/vec.inc: a change here is a change there.)

// 1 / sqrt(var + eps) of the biased variance.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t norm_rstd(acc_t var, acc_t eps) {
  return acc_t(1) / std::sqrt(var + eps);
}

// The normalised, rectified value of a pooled input element (NaN propagates, as through torch.relu).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t norm_relu(acc_t v, acc_t mean, acc_t rstd) {
  const acc_t y = (v - mean) * rstd;
  return (y > acc_t(0) || y != y) ? y : acc_t(0);
}

// The ReLU's backward at one pooled output: the gradient where the output is positive, else 0.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t norm_relu_grad(acc_t grad, acc_t out) {
  return out > acc_t(0) ? grad : acc_t(0);
}

// grad_in of one input element x that the pool's backward routed `routed` to; c1 = s1 / M, c2 = s2 / M.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t norm_input_grad(acc_t routed, acc_t x, acc_t mean, acc_t rstd, acc_t c1, acc_t c2) {
  return rstd * (routed - c1 - (x - mean) * rstd * c2);
}

}  // namespace gconv_ext
