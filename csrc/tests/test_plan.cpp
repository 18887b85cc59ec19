// C++ tests of the plan builder and the CPU transform (run by ctest): the plan is a valid CSR map,
// its transpose holds the same entries, quarter turns are single-tap permutations, rows sum to one
// inside the filter, and the CPU forward/backward satisfy <T w, y> = <w, T^T y>.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <tuple>

#include "gconv_ext/ops.h"
#include "gconv_ext/plan.h"

using namespace gconv_ext;

// The transform ops as registered (CPU tensors: the CPU kernels of cpu/filter_transform_cpu.cpp).
static at::Tensor call_transform(const char* name, const at::Tensor& t, int64_t rotations, bool reflections,
                                 bool disk_mask) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<at::Tensor(const at::Tensor&, int64_t, bool, bool)>()
      .call(t, rotations, reflections, disk_mask);
}
static at::Tensor lift_filter(const at::Tensor& w, int64_t n, bool refl, bool disk) {
  return call_transform("gconv_ext::lift_filter", w, n, refl, disk);
}
static at::Tensor lift_filter_backward(const at::Tensor& g, int64_t n, bool refl, bool disk) {
  return call_transform("gconv_ext::lift_filter_backward", g, n, refl, disk);
}
static at::Tensor group_filter(const at::Tensor& w, int64_t n, bool refl, bool disk) {
  return call_transform("gconv_ext::group_filter", w, n, refl, disk);
}
static at::Tensor group_filter_backward(const at::Tensor& g, int64_t n, bool refl, bool disk) {
  return call_transform("gconv_ext::group_filter_backward", g, n, refl, disk);
}

static int failures = 0;
#define EXPECT(cond, ...)                                          \
  do {                                                             \
    if (!(cond)) {                                                 \
      ++failures;                                                  \
      std::fprintf(stderr, "FAILED %s:%d: %s | ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                           \
      std::fprintf(stderr, "\n");                                  \
    }                                                              \
  } while (0)

static void check_plan(int64_t n, bool refl, int64_t k, bool disk) {
  const HostPlan p = build_plan({n, refl, k, disk});
  const int64_t order = group_order(n, refl), kk = k * k;
  EXPECT(p.order == order && p.kk == kk, "sizes");
  EXPECT(static_cast<int64_t>(p.fwd_ptr.size()) == order * kk + 1, "fwd_ptr size");
  EXPECT(static_cast<int64_t>(p.bwd_ptr.size()) == kk + 1, "bwd_ptr size");
  EXPECT(p.fwd_src.size() == p.bwd_g.size() && p.fwd_w.size() == p.bwd_w.size(), "nnz differ");
  std::map<std::tuple<int, int, int>, double> fwd, bwd;
  for (int64_t row = 0; row < order * kk; ++row) {
    EXPECT(p.fwd_ptr[row] <= p.fwd_ptr[row + 1], "ptr not monotone");
    EXPECT(p.fwd_ptr[row + 1] - p.fwd_ptr[row] <= 4, "more than 4 bilinear taps");
    for (int32_t e = p.fwd_ptr[row]; e < p.fwd_ptr[row + 1]; ++e) {
      EXPECT(p.fwd_src[e] >= 0 && p.fwd_src[e] < kk, "src out of range");
      EXPECT(p.fwd_w[e] > 0.0 && p.fwd_w[e] <= 1.0, "weight out of (0, 1]");
      fwd[{static_cast<int>(row / kk), static_cast<int>(row % kk), p.fwd_src[e]}] += p.fwd_w[e];
    }
  }
  for (int64_t t = 0; t < kk; ++t)
    for (int32_t e = p.bwd_ptr[t]; e < p.bwd_ptr[t + 1]; ++e) bwd[{p.bwd_g[e], p.bwd_o[e], static_cast<int>(t)}] += p.bwd_w[e];
  EXPECT(fwd == bwd, "transposed plan differs from the forward plan (n=%lld k=%lld)", (long long)n, (long long)k);
  // Identity element: the identity map (on the kept taps).
  for (int64_t o = 0; o < kk; ++o) {
    const int32_t b = p.fwd_ptr[o], e = p.fwd_ptr[o + 1];
    EXPECT(e - b <= 1 && (e == b || (p.fwd_src[b] == o && p.fwd_w[b] == 1.0)), "identity not exact at tap %lld",
           (long long)o);
  }
  // Quarter turns and reflections: one source tap with weight exactly 1 (a permutation).
  for (int64_t g = 0; g < order; ++g) {
    if ((4 * (g % n)) % n != 0) continue;
    std::map<int, int> seen;
    for (int64_t o = 0; o < kk; ++o) {
      const int64_t row = g * kk + o;
      EXPECT(p.fwd_ptr[row + 1] - p.fwd_ptr[row] == (disk ? p.fwd_ptr[row + 1] - p.fwd_ptr[row] : 1),
             "quarter turn g=%lld is not one tap", (long long)g);
      for (int32_t e = p.fwd_ptr[row]; e < p.fwd_ptr[row + 1]; ++e) {
        EXPECT(p.fwd_w[e] == 1.0, "quarter-turn weight not exactly 1");
        ++seen[p.fwd_src[e]];
      }
    }
    for (const auto& [src, count] : seen) EXPECT(count == 1, "quarter turn is not a permutation");
  }
  // Cayley tables: Latin squares, g^-1 (g h) = h.
  for (int64_t g = 0; g < order; ++g)
    for (int64_t h = 0; h < order; ++h) {
      const int32_t gh = p.mul[g * order + h];
      EXPECT(p.inv_mul[g * order + gh] == h, "inverse table");
    }
}

static void check_adjoint(int64_t n, bool refl, int64_t k) {
  const int64_t order = group_order(n, refl);
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor w = at::randn({3, 2, k, k}, opts), y = at::randn({3, order, 2, k, k}, opts);
  const double lhs = (lift_filter(w, n, refl, false) * y).sum().item<double>();
  const double rhs = (w * lift_filter_backward(y, n, refl, false)).sum().item<double>();
  EXPECT(std::abs(lhs - rhs) < 1e-10 * (1 + std::abs(lhs)), "lift adjoint %g vs %g", lhs, rhs);
  at::Tensor wg = at::randn({2, 3, order, k, k}, opts), yg = at::randn({2, order, 3, order, k, k}, opts);
  const double lhs2 = (group_filter(wg, n, refl, true) * yg).sum().item<double>();
  const double rhs2 = (wg * group_filter_backward(yg, n, refl, true)).sum().item<double>();
  EXPECT(std::abs(lhs2 - rhs2) < 1e-10 * (1 + std::abs(lhs2)), "group adjoint %g vs %g", lhs2, rhs2);
  // C4: slice r of the lifted filter is rot90(w, r).
  if (n == 4 && !refl) {
    at::Tensor lifted = lift_filter(w, 4, false, false);
    for (int64_t r = 0; r < 4; ++r)
      EXPECT(at::equal(lifted.select(1, r), at::rot90(w, r, {-2, -1})), "C4 slice %lld is not rot90", (long long)r);
  }
}

int main() {
  for (int64_t n = 1; n <= 16; ++n)
    for (bool refl : {false, true})
      for (int64_t k = 1; k <= 7; ++k)
        for (bool disk : {false, true}) check_plan(n, refl, k, disk);
  for (int64_t n : {1, 3, 4, 8})
    for (bool refl : {false, true})
      for (int64_t k : {1, 4, 5}) check_adjoint(n, refl, k);
  bool threw = false;
  try {
    build_plan({0, false, 3, false});
  } catch (const c10::Error&) {
    threw = true;
  }
  EXPECT(threw, "rotations = 0 must be rejected");
  if (failures) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_plan: all checks passed\n");
  return 0;
}
