// Loads into the accumulation type and stores back, for the CPU's elementwise loops. static_cast through
// c10::BFloat16 keeps gcc from vectorising the loops around it (the rounding branches on NaN), so bfloat16 has
// its own two lines here: widening is a 16-bit shift of the bits, and narrowing rounds to nearest even without
// a branch. Both give exactly the bits of c10's conversions (NaN becomes 0x7FC0, as there); every other type is
// a static_cast. Results do not change, only the speed (test_spatial_pool.py's
// test_bfloat16_rounding_is_torchs_bit_for_bit checks the rounding bit for bit, NaN included).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>

#include <bit>
#include <cstdint>
#include <type_traits>

namespace gconv_ext {

// v in the accumulation type of its dtype (at::opmath_type).
template <typename scalar_t>
C10_ALWAYS_INLINE at::opmath_type<scalar_t> widen(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return std::bit_cast<float>(static_cast<uint32_t>(v.x) << 16);
  } else {
    return static_cast<at::opmath_type<scalar_t>>(v);
  }
}

// v rounded to scalar_t (to nearest even).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE scalar_t narrow(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    const uint32_t u = std::bit_cast<uint32_t>(v);
    const uint16_t rounded = static_cast<uint16_t>((u + ((u >> 16) & 1u) + 0x7FFFu) >> 16);
    return c10::BFloat16(v != v ? uint16_t(0x7FC0) : rounded, c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// n contiguous values narrowed (a plain loop over narrow(), which gcc vectorises; the same conversion in a strided
// scalar loop compiles to a branch per element).
template <typename scalar_t, typename acc_t>
inline void narrow_n(const acc_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<scalar_t>(src[i]);
}

}  // namespace gconv_ext
