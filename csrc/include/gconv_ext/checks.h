// Argument checks shared by the host functions of every op family (one home, one wording). Each names the
// argument and what was expected; ValueError/TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "gconv_ext/plan.h"

namespace gconv_ext {

// The largest N of C_N / D_N: the transform plans and Cayley tables grow as |G|^2 (N = 1024: 16 MB), and
// group_order(N, true) must not overflow. gconv_ext/_args.py MAX_ROTATIONS is the same number.
constexpr int64_t kMaxRotations = 1024;

// A dtype as Python spells it ("torch.float32"), so the messages read like the Python twins' (which print
// torch.dtype) rather than c10's "Float".
inline std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case at::kFloat8_e5m2: return "torch.float8_e5m2";
    default: return std::string("torch.") + c10::toString(s);
  }
}

inline void check_group(int64_t rotations) {
  TORCH_CHECK_VALUE(rotations >= 1 && rotations <= kMaxRotations,
                    "gconv_ext: rotations (N of C_N/D_N) must be in [1, ", kMaxRotations, "], got ", rotations);
}

// The largest kernel size, stride, padding or dilation, and padded plane side: products of two of them stay far
// from int64 overflow, and backends index planes with them. Larger values are errors, not wrap-arounds.
constexpr int64_t kMaxExtent = int64_t(1) << 31;

// t.size(dim) must be |G| of C_N (D_N when reflections).
inline void check_order(const at::Tensor& t, const char* name, int64_t dim, int64_t rotations, bool reflections) {
  const int64_t order = group_order(rotations, reflections);
  TORCH_CHECK_VALUE(t.size(dim) == order, "gconv_ext: ", name, ".shape[", dim, "] must be the group order |G| = ",
                    order, " for ", (reflections ? "D" : "C"), rotations, ", got ", t.size(dim));
}

inline void check_floating(const at::Tensor& t, const char* name) {
  // The kernels are instantiated for exactly these four (float8 and other floating types included in
  // isFloatingType would otherwise reach AT_DISPATCH and fail with "not implemented").
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, "gconv_ext: ", name,
                   " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ", dtype_name(s));
}

// A stride/padding/dilation/kernel_size argument: 2 elements, each >= min (int64_t or c10::SymInt).
template <typename T>
inline void check_pair(c10::ArrayRef<T> v, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2, "gconv_ext: ", name, " must have 2 elements, got ", v.size());
  for (const auto& e : v) {
    TORCH_CHECK_VALUE(e >= min && e < kMaxExtent, "gconv_ext: ", name, " must be in [", min, ", 2^31), got ", v);
  }
}

// `other` must match `ref` in shape-independent properties: dtype and device.
inline void check_like(const at::Tensor& other, const char* other_name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(other.scalar_type() == ref.scalar_type(), "gconv_ext: ", other_name, " must have the dtype of ",
                   ref_name, " (", dtype_name(ref.scalar_type()), "), got ", dtype_name(other.scalar_type()));
  TORCH_CHECK(other.device() == ref.device(), "gconv_ext: ", other_name, " and ", ref_name,
              " must be on the same device, got ", other.device(), " and ", ref.device());
}

}  // namespace gconv_ext
