// The CPU's hot loops, compiled once per instruction set and picked at run time (as ATen builds its CPU
// kernels once per capability).
//
// cpu_kernels.inc holds the loops (the filter transforms' lane tiles; pool_planes.inc, which it includes: the
// whole plane loops of the pools and of the fused layer norm + ReLU + max pool, conversions to and from
// bfloat16 / half included); kernels_default.cpp, kernels_avx2.cpp and kernels_avx512.cpp compile it
// with the baseline flags, `#pragma GCC target("avx2")` and `#pragma GCC target("avx512f,...")`, each into its
// own namespace (gconv_ext::cpu_default, cpu_avx2, cpu_avx512), and fill a CpuKernels table. No -march flag is
// ever set, so the library runs on any x86-64 CPU; cpu_capability.cpp asks the CPU (cpuid) once and hands out
// the best table it supports. The AVX variants exist only where the compiler is GCC on x86-64; elsewhere
// (aarch64, clang, MSVC) the default variant is the only one, and it is the portable path.
//
// Every variant evaluates the same per-element arithmetic (filter_transform.h, spatial_pool.h, norm_pool.h,
// convert_cpu.h) on the same tiles in the same order, without FP contraction (-ffp-contract=off), so results
// are bit-identical whichever variant runs (tested: python_tests/test_cpu_capability.py). The wider
// instruction sets change speed only.
//
// The inline code that the variants share (our per-element templates, the standard library) is included
// before any target pragma, so an out-of-line copy of it is always baseline code, whichever variant's object
// the linker keeps. Only functions defined inside a variant's namespace carry its instruction set; the test
// disassembles the built library and checks that no other function touches a ymm / zmm register.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "convert_cpu.h"
#include "gconv_ext/filter_transform.h"
#include "gconv_ext/norm_pool.h"
#include "gconv_ext/spatial_pool.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GCONV_EXT_CPU_DISPATCH 1
#else
#define GCONV_EXT_CPU_DISPATCH 0
#endif

namespace gconv_ext {

// Lanes per lane tile of the filter transforms: W filters at once (fixed, whatever the instruction set, so
// every variant computes the same tile).
template <typename acc_t>
constexpr int lanes_for() {
  return sizeof(acc_t) == 4 ? 16 : 8;
}

// Tap indices of the pooling loops, in an integer type as wide as the accumulator (so the selects vectorise
// with the values).
template <typename acc_t>
using tap_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;

// W values in lockstep: the per-element templates run on these, and the compiler turns the loops into SIMD of
// the width of the variant they are inlined into. They are defined here, before any target pragma (baseline
// code if ever emitted out of line), and always inlined: a function compiled for a wider target may inline
// baseline code, but baseline code (such as the per-element templates, which call these) may not inline a
// wider target's function.
template <typename T, int W>
struct Lanes {
  T v[W];
  Lanes() = default;
  C10_ALWAYS_INLINE explicit Lanes(T s) {
    for (int i = 0; i < W; ++i) v[i] = s;
  }
  C10_ALWAYS_INLINE friend Lanes operator+(const Lanes& a, const Lanes& b) {
    Lanes r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  C10_ALWAYS_INLINE friend Lanes operator*(const Lanes& a, const Lanes& b) {
    Lanes r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
};

template <typename T, int W>
struct TileTaps {  // tap t of one slice in a lane-minor tile
  const T* base;
  C10_ALWAYS_INLINE Lanes<T, W> operator()(int64_t t) const {
    Lanes<T, W> r;
    for (int i = 0; i < W; ++i) r.v[i] = base[t * W + i];
    return r;
  }
};

template <typename T, int W>
struct TileGrouped {  // (g, h, o) of a lane-minor grad_out tile
  const T* base;
  int64_t gin, kk;
  C10_ALWAYS_INLINE Lanes<T, W> operator()(int64_t g, int64_t h, int64_t o) const {
    const T* p = base + ((g * gin + h) * kk + o) * W;
    Lanes<T, W> r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
};

// The pooling tile of one [H, W] plane (pool_planes.inc explains the flat index).
struct Flat {
  int64_t rows, cols;  // the tile: (OH - 1) s_h + k_h rows, C = (OW - 1) s_w + k_w rounded up to a multiple of s_w
  int64_t pitch;       // P = s_h C / s_w: flat index f = oy * P + ox, window f starts at tile element f * s_w
  int64_t count;       // (OH - 1) P + OW flat outputs
  int64_t size() const { return rows * cols; }
};

inline Flat flat_of(const Pool2dGeom& g) {
  Flat f;
  f.rows = (g.oh - 1) * g.sh + g.kh;
  f.cols = ((g.ow - 1) * g.sw + g.kw + g.sw - 1) / g.sw * g.sw;
  f.pitch = g.sh * f.cols / g.sw;
  f.count = (g.oh - 1) * f.pitch + g.ow;
  return f;
}

// at::parallel_for grain for loops over planes of plane_size elements: about 16K elements per task.
inline int64_t plane_grain(int64_t plane_size) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_size));
}

// The filter transforms of one accumulation type (float for float / half / bfloat16 inputs, double for double),
// one block of W = lanes_for<acc_t>() filters in lane-minor tiles:
template <typename acc_t>
struct CpuKernelSet {
  // forward, output group element g: tout[(h, o), l] = sum_e w_e tin[(src slice, src_e), l]  (h < gin, o < kk)
  void (*transform_forward)(const PlanView& p, const acc_t* tin, acc_t* tout, int64_t g, int64_t gin);
  // backward: tout[(a, t), l] = sum_e w_e tg[(g_e, g_e a, o_e), l]  (a < gin, t < kk)
  void (*transform_backward)(const PlanView& p, const acc_t* tg, acc_t* tout, int64_t gin);
};

// The plane loops of spatial pooling and of the fused layer norm + ReLU + max pool (pool_planes.inc) for one
// dtype and one type of stored argmax taps, each over planes [begin, end) of [H, W] planes:
template <typename scalar_t, typename index_t>
struct PoolPlaneFns {
  using acc_t = at::opmath_type<scalar_t>;
  // max (its argmax taps too where indices is not null) or avg pooling
  void (*forward)(const scalar_t* in, scalar_t* out, index_t* indices, int64_t begin, int64_t end,
                  const Pool2dGeom& g, bool max);
  // the backward of max (routed by indices) or of avg (indices null)
  void (*backward)(const scalar_t* grad_out, const index_t* indices, scalar_t* grad_in, int64_t begin, int64_t end,
                   const Pool2dGeom& g);
  // fused: the max pool of x, its values normalised by the statistics of their sample (per_sample planes each)
  void (*norm_forward)(const scalar_t* x, scalar_t* out, index_t* indices, const acc_t* mean, const acc_t* rstd,
                       int64_t per_sample, int64_t begin, int64_t end, const Pool2dGeom& g);
  // fused backward: the pool's backward of grad_out masked by the ReLU (out > 0), then the layer norm's (c: two
  // sums per sample)
  void (*norm_backward)(const scalar_t* grad_out, const scalar_t* out, const index_t* indices, const scalar_t* x,
                        const acc_t* mean, const acc_t* rstd, const acc_t* c, scalar_t* grad_in, int64_t per_sample,
                        int64_t begin, int64_t end, const Pool2dGeom& g);
};

template <typename scalar_t>
struct PoolKernels {
  using acc_t = at::opmath_type<scalar_t>;
  PoolPlaneFns<scalar_t, uint8_t> u8;   // taps stored as uint8 (k_h k_w <= 256)
  PoolPlaneFns<scalar_t, int32_t> i32;  // as int32
  // the fused op's per-sample passes: the statistics of m elements; the backward's two sums
  void (*norm_stats)(const scalar_t* x, int64_t m, double eps, acc_t* mean, acc_t* rstd);
  void (*norm_grad_sums)(const scalar_t* grad_out, const scalar_t* out, int64_t mo, int64_t m, acc_t* c);

  template <typename index_t>
  const PoolPlaneFns<scalar_t, index_t>& taps() const {
    if constexpr (std::is_same_v<index_t, uint8_t>) {
      return u8;
    } else {
      static_assert(std::is_same_v<index_t, int32_t>, "taps are stored as uint8 or int32");
      return i32;
    }
  }
};

struct CpuKernels {
  const char* name;  // "default", "avx2", "avx512"
  CpuKernelSet<float> f32;
  CpuKernelSet<double> f64;
  PoolKernels<float> pool_f32;
  PoolKernels<double> pool_f64;
  PoolKernels<c10::BFloat16> pool_bf16;
  PoolKernels<c10::Half> pool_f16;

  template <typename acc_t>
  const CpuKernelSet<acc_t>& get() const {
    if constexpr (std::is_same_v<acc_t, double>) {
      return f64;
    } else {
      return f32;
    }
  }
  template <typename scalar_t>
  const PoolKernels<scalar_t>& pool() const {
    if constexpr (std::is_same_v<scalar_t, double>) {
      return pool_f64;
    } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      return pool_bf16;
    } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
      return pool_f16;
    } else {
      static_assert(std::is_same_v<scalar_t, float>, "pooling runs on float, double, bfloat16 and half");
      return pool_f32;
    }
  }
};

extern const CpuKernels kCpuKernelsDefault;
#if GCONV_EXT_CPU_DISPATCH
extern const CpuKernels kCpuKernelsAvx2;
extern const CpuKernels kCpuKernelsAvx512;
#endif

// The variant in use: the best the CPU supports, or a lower one named by GCONV_EXT_CPU_CAPABILITY
// (default / avx2 / avx512) at first use, or by set_cpu_capability.
const CpuKernels& cpu_kernels();
// The names of the variants this build has and this CPU can run, lowest first.
const char* const* supported_cpu_capabilities(int* count);
// Switches the variant (for tests and benchmarks); returns false, changing nothing, for a name this build
// or CPU cannot run.
bool set_cpu_capability(const char* name);

}  // namespace gconv_ext
