// Spatial pooling that keeps the group axis (max or average over windows of every [H, W] plane of
// [B, C, |G|, H, W], or of [B, C, H, W]): host checks and layout; the backends' launchers run the shared
// per-element arithmetic (spatial_pool.h).
#include <ATen/ATen.h>

#include "gconv_ext/checks.h"
#include "gconv_ext/ops.h"
#include "gconv_ext/spatial_pool.h"

namespace gconv_ext {

void check_pool_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4 || t.dim() == 5, "gconv_ext: ", name,
                    " must be a 5-D group map [B, C, |G|, H, W] or a 4-D tensor [B, C, H, W], got shape ", t.sizes());
  check_floating(t, name);
}

// Checks the parameters and the input size; the geometry of pooling a [.., h, w] plane.
Pool2dGeom pool_geometry(int64_t h, int64_t w, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK_VALUE(2 * padding[d] <= kernel_size[d], "gconv_ext: padding must be at most half the kernel size, "
                      "got padding ", padding, " for kernel_size ", kernel_size);
  }
  TORCH_CHECK_VALUE(h >= 1 && w >= 1, "gconv_ext: input spatial size must be non-empty, got ", h, "x", w);
  TORCH_CHECK_VALUE(h + 2 * padding[0] >= kernel_size[0] && w + 2 * padding[1] >= kernel_size[1],
                    "gconv_ext: input spatial size ", h, "x", w, " is too small for kernel_size ", kernel_size,
                    " with padding ", padding);
  // The padded plane is what the backends tile and index: at most 2^31 elements (a bound on memory, and far
  // from int64 overflow; check_pair bounds each extent by 2^31 first).
  TORCH_CHECK_VALUE((h + 2 * padding[0]) * (w + 2 * padding[1]) <= kMaxExtent,
                    "gconv_ext: the padded input plane (", h, " + 2*", padding[0], ") x (", w, " + 2*", padding[1],
                    ") must have at most 2^31 elements; use a smaller kernel_size and padding");
  const int64_t oh = (h + 2 * padding[0] - kernel_size[0]) / stride[0] + 1;
  const int64_t ow = (w + 2 * padding[1] - kernel_size[1]) / stride[1] + 1;
  // With one window along an axis its stride is never used: 1 stands for any (a huge stride would overflow
  // the backends' index arithmetic for nothing).
  const int64_t sh = oh == 1 ? 1 : stride[0], sw = ow == 1 ? 1 : stride[1];
  return {h, w, oh, ow, kernel_size[0], kernel_size[1], sh, sw, padding[0], padding[1]};
}

Pool2dGeom pool_geometry_of(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding) {
  return pool_geometry(input.size(-2), input.size(-1), kernel_size, stride, padding);
}

std::vector<int64_t> pool_output_sizes(at::IntArrayRef input_sizes, const Pool2dGeom& g) {
  std::vector<int64_t> sizes(input_sizes.begin(), input_sizes.end());
  sizes[sizes.size() - 2] = g.oh;
  sizes[sizes.size() - 1] = g.ow;
  return sizes;
}

// The dtype of the stored argmax taps: uint8 for windows of at most 256 taps, int32 beyond.
at::ScalarType pool_index_dtype(const Pool2dGeom& g) { return g.kh * g.kw <= kMaxTapsU8 ? at::kByte : at::kInt; }

void check_pool_indices(const at::Tensor& indices, at::IntArrayRef expected, const Pool2dGeom& g, at::Device device) {
  TORCH_CHECK_VALUE(indices.sizes() == expected, "gconv_ext: indices must have the output shape ", expected,
                    ", got ", indices.sizes());
  const at::ScalarType want = pool_index_dtype(g);
  TORCH_CHECK_TYPE(indices.scalar_type() == want, "gconv_ext: indices must be the ", dtype_name(want),
                   " argmax taps of group_max_pool2d_with_indices for a ", g.kh, "x", g.kw, " window, got ",
                   dtype_name(indices.scalar_type()));
  TORCH_CHECK(indices.device() == device, "gconv_ext: indices must be on the same device as the other tensors (",
              device, "), got ", indices.device());
}

namespace {

void check_grad_out(const at::Tensor& grad_out, at::IntArrayRef input_sizes, const Pool2dGeom& g) {
  const std::vector<int64_t> expected = pool_output_sizes(input_sizes, g);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expected), "gconv_ext: grad_out must have the output shape ",
                    at::IntArrayRef(expected), ", got ", grad_out.sizes());
}

// The geometry of a backward's input_size (4 or 5 sizes), with grad_out checked against its output shape.
Pool2dGeom backward_geometry(const at::Tensor& grad_out, at::IntArrayRef input_sizes, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding) {
  check_pool_map(grad_out, "grad_out");
  TORCH_CHECK_VALUE(input_sizes.size() == 4 || input_sizes.size() == 5,
                    "gconv_ext: input_size must have 4 or 5 elements, got ", input_sizes);
  const Pool2dGeom g =
      pool_geometry(input_sizes[input_sizes.size() - 2], input_sizes.back(), kernel_size, stride, padding);
  check_grad_out(grad_out, input_sizes, g);
  return g;
}

}  // namespace

at::Tensor spatial_pool_host(const SpatialPoolLaunchers& run, const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, bool max) {
  check_pool_map(input, "input");
  const Pool2dGeom g = pool_geometry_of(input, kernel_size, stride, padding);
  const at::Tensor in = input.contiguous();
  at::Tensor out = at::empty(pool_output_sizes(input.sizes(), g), in.options());
  if (out.numel() == 0) return out;
  run.forward(in, out, at::Tensor(), g, max);
  return out;
}

std::tuple<at::Tensor, at::Tensor> group_max_pool2d_with_indices_host(const SpatialPoolLaunchers& run,
                                                                      const at::Tensor& input,
                                                                      at::IntArrayRef kernel_size,
                                                                      at::IntArrayRef stride, at::IntArrayRef padding) {
  check_pool_map(input, "input");
  const Pool2dGeom g = pool_geometry_of(input, kernel_size, stride, padding);
  const at::Tensor in = input.contiguous();
  const std::vector<int64_t> sizes = pool_output_sizes(input.sizes(), g);
  at::Tensor out = at::empty(sizes, in.options());
  at::Tensor indices = at::empty(sizes, in.options().dtype(pool_index_dtype(g)));
  if (out.numel() > 0) run.forward(in, out, indices, g, /*max=*/true);
  return {out, indices};
}

at::Tensor group_max_pool2d_backward_host(const SpatialPoolLaunchers& run, const at::Tensor& grad_out,
                                          const at::Tensor& indices, c10::SymIntArrayRef input_size,
                                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding) {
  const at::IntArrayRef input_sizes = C10_AS_INTARRAYREF_SLOW(input_size);
  const Pool2dGeom g = backward_geometry(grad_out, input_sizes, kernel_size, stride, padding);
  check_pool_indices(indices, grad_out.sizes(), g, grad_out.device());
  const at::Tensor go = grad_out.contiguous(), idx = indices.contiguous();
  at::Tensor grad_in = at::empty(input_sizes, go.options());
  if (grad_in.numel() == 0) return grad_in;
  run.backward(go, idx, grad_in, g);
  return grad_in;
}

at::Tensor group_avg_pool2d_backward_host(const SpatialPoolLaunchers& run, const at::Tensor& grad_out,
                                          c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding) {
  const at::IntArrayRef input_sizes = C10_AS_INTARRAYREF_SLOW(input_size);
  const Pool2dGeom g = backward_geometry(grad_out, input_sizes, kernel_size, stride, padding);
  const at::Tensor go = grad_out.contiguous();
  at::Tensor grad_in = at::empty(input_sizes, go.options());
  if (grad_in.numel() == 0) return grad_in;
  run.backward(go, at::Tensor(), grad_in, g);  // avg: no taps
  return grad_in;
}

at::Tensor group_max_pool2d_gather_host(const SpatialPoolLaunchers& run, const at::Tensor& values,
                                        const at::Tensor& indices, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding) {
  check_pool_map(values, "values");
  const Pool2dGeom g = pool_geometry_of(values, kernel_size, stride, padding);
  const std::vector<int64_t> sizes = pool_output_sizes(values.sizes(), g);
  check_pool_indices(indices, sizes, g, values.device());
  const at::Tensor vals = values.contiguous(), idx = indices.contiguous();
  at::Tensor out = at::empty(sizes, vals.options());
  if (out.numel() == 0) return out;
  run.gather(vals, idx, out, g);
  return out;
}

}  // namespace gconv_ext
