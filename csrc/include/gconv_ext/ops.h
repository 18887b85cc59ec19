// Host functions of the operators, shared by the backends. Each backend file (cpu/*.cpp, cuda/*.cu) defines
// its launchers, passes them to these host functions and registers the result for its dispatch key with
// its own TORCH_LIBRARY_IMPL; the schemas are in library.cpp. The host functions check the arguments
// (checks.h), fix the layout (contiguous inputs, preallocated outputs) and call the launchers; the
// dispatcher has already chosen the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "gconv_ext/plan.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {

// ---- filter transforms (filter_transform.cpp) ------------------------------------------------------------
// lift: [C_out, C_in, k, k] <-> [C_out, |G|, C_in, k, k]; group: [C_out, C_in, |G|, k, k] <->
// [C_out, |G|, C_in, |G|, k, k].

// Shapes of one filter transform: the filter is [c_out, c_in, gin, kk], the output [c_out, G, c_in, gin, kk].
struct TransformSizes {
  int64_t c_out, c_in, gin;
};

// `in`/`grad_out` contiguous, `out`/`grad_in` preallocated, contiguous and non-empty.
struct TransformLaunchers {
  void (*forward)(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s);
  void (*backward)(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan, const TransformSizes& s);
};

// Which of the four transforms: lifting or group filter, the transform (forward) or its adjoint (backward);
// `arg` and `layout` name the argument in errors.
struct TransformKind {
  bool lifting, forward;
  const char* arg;
  const char* layout;
};
inline constexpr TransformKind kLiftFilter{true, true, "weight", "[C_out, C_in, k, k]"};
inline constexpr TransformKind kLiftFilterBackward{true, false, "grad", "[C_out, |G|, C_in, k, k]"};
inline constexpr TransformKind kGroupFilter{false, true, "weight", "[C_out, C_in, |G|, k, k]"};
inline constexpr TransformKind kGroupFilterBackward{false, false, "grad", "[C_out, |G|, C_in, |G|, k, k]"};

at::Tensor transform_host(const TransformLaunchers& run, const TransformKind& kind, const at::Tensor& t,
                          int64_t rotations, bool reflections, bool disk_mask);

// ---- group pooling over the group axis (group_pool.cpp) ---------------------------------------------------
// [B, C, |G|, H, W] -> [B, C, H, W], mode "max" or "mean"; the max backward sends the gradient to the first
// maximal element of each group fibre.

// `in` [BC, G, HW] and `grad_out` [BC, HW] contiguous, outputs preallocated and non-empty.
struct GroupPoolLaunchers {
  void (*forward)(const at::Tensor& in, at::Tensor& out, int64_t order, int64_t hw, int64_t gstride, bool max);
  void (*backward)(const at::Tensor& grad_out, const at::Tensor& in, at::Tensor& grad_in, int64_t order, int64_t hw,
                   int64_t gstride, bool max);
};

at::Tensor group_pool_host(const GroupPoolLaunchers& run, const at::Tensor& input, c10::string_view mode);
at::Tensor group_pool_backward_host(const GroupPoolLaunchers& run, const at::Tensor& grad_out,
                                    const at::Tensor& input, c10::string_view mode);

// ---- spatial pooling that keeps the group axis (spatial_pool.cpp) ----------------------------------------
// Every [H, W] plane of [B, C, |G|, H, W] (or [B, C, H, W]) pooled on its own. Max: padding is -inf, the
// gradient goes to the first maximal element of each window, whose tap the forward stores (indices: uint8 for
// windows of <= 256 taps, int32 beyond); avg: zero padding counted. `gather` reads `values` at the stored tap
// of each window (the adjoint of the max backward).

// `in`, `values`, `grad_out`, `indices` contiguous [N.., H, W] / [N.., OH, OW] (`indices` undefined where no
// taps are stored or read: the value-only max forward and avg), outputs preallocated and non-empty.
struct SpatialPoolLaunchers {
  void (*forward)(const at::Tensor& in, at::Tensor& out, const at::Tensor& indices, const Pool2dGeom& g, bool max);
  void (*gather)(const at::Tensor& values, const at::Tensor& indices, at::Tensor& out, const Pool2dGeom& g);
  // max when `indices` is defined (routed by the stored taps), avg otherwise
  void (*backward)(const at::Tensor& grad_out, const at::Tensor& indices, at::Tensor& grad_in, const Pool2dGeom& g);
};

// Calls f(index_t{}) with the type of the stored argmax taps (uint8 or int32; uint8 stands in where there are
// none), and the taps' pointer (null when undefined): for the backends' launchers.
template <typename F>
void with_index_type(const at::Tensor& indices, const F& f) {
  if (indices.defined() && indices.scalar_type() == at::kInt) {
    f(int32_t{});
  } else {
    f(uint8_t{});
  }
}

template <typename index_t>
index_t* index_ptr(const at::Tensor& indices) {
  return indices.defined() ? static_cast<index_t*>(indices.data_ptr()) : nullptr;
}

// The shared checks and geometry of the pooling ops (spatial_pool.cpp), also used by the fused norm + pool.
void check_pool_map(const at::Tensor& t, const char* name);
Pool2dGeom pool_geometry_of(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding);
std::vector<int64_t> pool_output_sizes(at::IntArrayRef input_sizes, const Pool2dGeom& g);
at::ScalarType pool_index_dtype(const Pool2dGeom& g);
void check_pool_indices(const at::Tensor& indices, at::IntArrayRef expected, const Pool2dGeom& g, at::Device device);

at::Tensor spatial_pool_host(const SpatialPoolLaunchers& run, const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, bool max);
std::tuple<at::Tensor, at::Tensor> group_max_pool2d_with_indices_host(const SpatialPoolLaunchers& run,
                                                                      const at::Tensor& input,
                                                                      at::IntArrayRef kernel_size,
                                                                      at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor group_max_pool2d_backward_host(const SpatialPoolLaunchers& run, const at::Tensor& grad_out,
                                          const at::Tensor& indices, c10::SymIntArrayRef input_size,
                                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding);
at::Tensor group_avg_pool2d_backward_host(const SpatialPoolLaunchers& run, const at::Tensor& grad_out,
                                          c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor group_max_pool2d_gather_host(const SpatialPoolLaunchers& run, const at::Tensor& values,
                                        const at::Tensor& indices, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding);

// ---- fused layer norm + ReLU + spatial max pool (norm_pool.cpp; arithmetic in norm_pool.h) ---------------
// input [B, ...] (4-D or 5-D), normalised over everything but B, pooled over the last two dims. Outputs: out
// (the pooled shape), the argmax taps (as group_max_pool2d_with_indices), and mean / rstd [B] in the
// accumulation type (float32, or float64 for a float64 input).

// The number of [H, W] planes of a map (the product of its leading dims).
inline int64_t planes_of(const at::Tensor& t) { return t.numel() / (t.size(-2) * t.size(-1)); }

// All tensors contiguous, outputs preallocated and non-empty.
struct NormPoolLaunchers {
  void (*forward)(const at::Tensor& in, at::Tensor& out, at::Tensor& indices, at::Tensor& mean, at::Tensor& rstd,
                  const Pool2dGeom& g, double eps);
  // scratch: c ([B, 2], the statistics' dtype), for s1 / M and s2 / M of every sample
  void (*backward)(const at::Tensor& grad_out, const at::Tensor& in, const at::Tensor& out,
                   const at::Tensor& indices, const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& grad_in,
                   at::Tensor& c, const Pool2dGeom& g);
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_relu_max_pool_host(
    const NormPoolLaunchers& run, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, double eps);
at::Tensor norm_relu_max_pool_backward_host(const NormPoolLaunchers& run, const at::Tensor& grad_out,
                                            const at::Tensor& input, const at::Tensor& out,
                                            const at::Tensor& indices, const at::Tensor& mean,
                                            const at::Tensor& rstd, at::IntArrayRef kernel_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding);

// ---- fused lifting / group convolutions (conv.cpp), for their C++ autograd (conv_autograd.cpp) -----------
// The registered kernels of lifting_conv2d / group_conv2d and their backward ops, callable directly: the
// forward can hand back the expanded filter it built (`expanded`, may be null), and the backward can take one
// (`expanded` defined) instead of expanding the filter again.
at::Tensor conv_forward_direct(bool lifting, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t rotations, bool reflections,
                               bool disk_mask, c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                               c10::SymIntArrayRef dilation, at::Tensor* expanded);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_direct(
    bool lifting, const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& expanded, int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
    c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, std::array<bool, 3> output_mask);

}  // namespace gconv_ext
