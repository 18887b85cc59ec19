// Transform plans: the sparse bilinear map of a filter transform and its transpose, built once per
// (group, kernel size, disk mask) and cached per device. Host-only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "gconv_ext/filter_transform.h"

namespace gconv_ext {

struct PlanKey {
  int64_t rotations;
  bool reflections;
  int64_t k;
  bool disk;
};

// The plan as plain host arrays (what the C++ test checks).
struct HostPlan {
  int64_t order = 0;
  int64_t kk = 0;
  std::vector<int32_t> fwd_ptr, fwd_src, bwd_ptr, bwd_g, bwd_o, mul, inv_mul;
  std::vector<double> fwd_w, bwd_w;
};

// The plan as tensors on one device; `view()` gives the raw pointers the kernels read.
struct DevicePlan {
  at::Tensor fwd_ptr, fwd_src, fwd_w64, fwd_w32, bwd_ptr, bwd_g, bwd_o, bwd_w64, bwd_w32, mul, inv_mul;
  int64_t order = 0;
  int64_t kk = 0;
  PlanView view() const;
};

// Group algebra with the conventions of gconv_ext/groups.py: element index m * N + r is R_r F^m.
int64_t group_order(int64_t rotations, bool reflections);
int64_t group_compose(int64_t rotations, int64_t g, int64_t h);
int64_t group_inverse(int64_t rotations, int64_t g);

HostPlan build_plan(const PlanKey& key);

// Thread-safe cache; the returned reference stays valid for the life of the process.
const DevicePlan& cached_plan(const PlanKey& key, c10::Device device);

}  // namespace gconv_ext
