// Filter transforms: host functions behind gconv_ext::{lift,group}_filter[_backward] (checks, layout, the
// cached transform plan); the backends' launchers run the shared per-element arithmetic.
#include <ATen/ATen.h>

#include <vector>

#include "gconv_ext/checks.h"
#include "gconv_ext/ops.h"

namespace gconv_ext {
namespace {

void check_filter(const at::Tensor& t, const char* name, int64_t expected_dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == expected_dim, "gconv_ext: ", name, " must be a ", expected_dim, "-D tensor ", layout,
                    ", got shape ", t.sizes());
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.size(-1) == t.size(-2) && t.size(-1) >= 1, "gconv_ext: ", name,
                    " must have a square kernel of size >= 1, got ", t.size(-2), "x", t.size(-1));
}

at::Tensor run_forward(const TransformLaunchers& run, const at::Tensor& in, at::Tensor& out, const PlanKey& key,
                       const TransformSizes& s) {
  if (out.numel() == 0) return out;
  run.forward(in, out, cached_plan(key, in.device()), s);
  return out;
}

at::Tensor run_backward(const TransformLaunchers& run, const at::Tensor& grad_out, at::Tensor& grad_in,
                        const PlanKey& key, const TransformSizes& s) {
  if (grad_in.numel() == 0) return grad_in;
  if (grad_out.numel() == 0) return grad_in.zero_();
  run.backward(grad_out, grad_in, cached_plan(key, grad_out.device()), s);
  return grad_in;
}

}  // namespace

at::Tensor transform_host(const TransformLaunchers& run, const TransformKind& kind, const at::Tensor& t,
                          int64_t rotations, bool reflections, bool disk_mask) {
  check_group(rotations);
  // forward: [C_out, C_in, (|G|,) k, k]; backward (the gradient of the output): [C_out, |G|, C_in, (|G|,) k, k]
  check_filter(t, kind.arg, 4 + (kind.lifting ? 0 : 1) + (kind.forward ? 0 : 1), kind.layout);
  if (!kind.forward) check_order(t, kind.arg, 1, rotations, reflections);
  if (!kind.lifting) check_order(t, kind.arg, kind.forward ? 2 : 3, rotations, reflections);
  const int64_t order = group_order(rotations, reflections), k = t.size(-1);
  const int64_t c_out = t.size(0), c_in = t.size(kind.forward ? 1 : 2), gin = kind.lifting ? 1 : order;
  std::vector<int64_t> out_sizes{c_out};
  if (kind.forward) out_sizes.push_back(order);  // the output group axis
  out_sizes.push_back(c_in);
  if (!kind.lifting) out_sizes.push_back(order);  // the input group axis
  out_sizes.insert(out_sizes.end(), {k, k});
  const at::Tensor in = t.contiguous();
  at::Tensor out = at::empty(out_sizes, in.options());
  const PlanKey key{rotations, reflections, k, disk_mask};
  const TransformSizes sizes{c_out, c_in, gin};
  return kind.forward ? run_forward(run, in, out, key, sizes) : run_backward(run, in, out, key, sizes);
}

}  // namespace gconv_ext
