#include "gconv_ext/plan.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

namespace gconv_ext {

int64_t group_order(int64_t rotations, bool reflections) { return rotations * (reflections ? 2 : 1); }

static int64_t mod(int64_t a, int64_t n) { return ((a % n) + n) % n; }

int64_t group_compose(int64_t n, int64_t g, int64_t h) {
  const int64_t m1 = g / n, r1 = g % n, m2 = h / n, r2 = h % n;
  return (m1 ^ m2) * n + mod(m1 ? r1 - r2 : r1 + r2, n);
}

int64_t group_inverse(int64_t n, int64_t g) {
  const int64_t m = g / n, r = g % n;
  return m ? g : mod(-r, n);
}

namespace {

constexpr double kSnap = 1e-9;

// cos and sin of 2 pi r / n, exact at multiples of 90 degrees.
void cos_sin(int64_t r, int64_t n, double* c, double* s) {
  r = mod(r, n);
  if ((4 * r) % n == 0) {
    static const double cs[4][2] = {{1, 0}, {0, 1}, {-1, 0}, {0, -1}};
    *c = cs[4 * r / n][0];
    *s = cs[4 * r / n][1];
    return;
  }
  const double t = 2.0 * M_PI * static_cast<double>(r) / static_cast<double>(n);
  *c = std::cos(t);
  *s = std::sin(t);
}

double snap(double v) {
  const double r = std::round(v);
  return std::abs(v - r) < kSnap ? r : v;
}

}  // namespace

HostPlan build_plan(const PlanKey& key) {
  TORCH_CHECK_VALUE(key.rotations >= 1, "gconv_ext: rotations must be >= 1, got ", key.rotations);
  TORCH_CHECK_VALUE(key.k >= 1, "gconv_ext: kernel size must be >= 1, got ", key.k);
  const int64_t n = key.rotations, k = key.k, kk = k * k;
  const int64_t order = group_order(n, key.reflections);
  const double c = (k - 1) / 2.0;
  std::vector<char> keep(kk, 1);
  if (key.disk) {
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j)
        keep[i * k + j] = ((i - c) * (i - c) + (j - c) * (j - c)) <= (k / 2.0) * (k / 2.0) + kSnap;
  }

  HostPlan plan;
  plan.order = order;
  plan.kk = kk;
  plan.fwd_ptr.push_back(0);
  // Transposed entries, bucketed by input tap, in (g, o) order so the adjoint sums in a fixed order.
  std::vector<std::vector<std::tuple<int32_t, int32_t, double>>> by_tap(kk);
  for (int64_t g = 0; g < order; ++g) {
    // g = R_r F^m; g^-1 p = F^m R_-r p.
    const int64_t m = g / n, r = g % n;
    double cs, sn;
    cos_sin(-r, n, &cs, &sn);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t o = i * k + j;
        if (keep[o]) {
          const double x = j - c, y = c - i;
          double sx = cs * x - sn * y, sy = sn * x + cs * y;
          if (m) sx = -sx;
          const double col = snap(c + sx), row = snap(c - sy);
          const double r0 = std::floor(row), c0 = std::floor(col);
          const double fr = row - r0, fc = col - c0;
          const double ws[4] = {(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc};
          const int64_t rs[4] = {0, 0, 1, 1}, cols[4] = {0, 1, 0, 1};
          for (int q = 0; q < 4; ++q) {
            const int64_t rr = static_cast<int64_t>(r0) + rs[q], cc = static_cast<int64_t>(c0) + cols[q];
            if (ws[q] == 0.0 || rr < 0 || rr >= k || cc < 0 || cc >= k || !keep[rr * k + cc]) continue;
            const int32_t src = static_cast<int32_t>(rr * k + cc);
            plan.fwd_src.push_back(src);
            plan.fwd_w.push_back(ws[q]);
            by_tap[src].emplace_back(static_cast<int32_t>(g), static_cast<int32_t>(o), ws[q]);
          }
        }
        plan.fwd_ptr.push_back(static_cast<int32_t>(plan.fwd_src.size()));
      }
    }
  }
  plan.bwd_ptr.push_back(0);
  for (int64_t t = 0; t < kk; ++t) {
    for (const auto& [g, o, w] : by_tap[t]) {
      plan.bwd_g.push_back(g);
      plan.bwd_o.push_back(o);
      plan.bwd_w.push_back(w);
    }
    plan.bwd_ptr.push_back(static_cast<int32_t>(plan.bwd_g.size()));
  }
  plan.mul.resize(order * order);
  plan.inv_mul.resize(order * order);
  for (int64_t g = 0; g < order; ++g) {
    for (int64_t h = 0; h < order; ++h) {
      plan.mul[g * order + h] = static_cast<int32_t>(group_compose(n, g, h));
      plan.inv_mul[g * order + h] = static_cast<int32_t>(group_compose(n, group_inverse(n, g), h));
    }
  }
  return plan;
}

PlanView DevicePlan::view() const {
  return PlanView{fwd_ptr.const_data_ptr<int32_t>(), fwd_src.const_data_ptr<int32_t>(),
                  fwd_w64.const_data_ptr<double>(),  fwd_w32.const_data_ptr<float>(),
                  bwd_ptr.const_data_ptr<int32_t>(), bwd_g.const_data_ptr<int32_t>(),
                  bwd_o.const_data_ptr<int32_t>(),   bwd_w64.const_data_ptr<double>(),
                  bwd_w32.const_data_ptr<float>(),   mul.const_data_ptr<int32_t>(),
                  inv_mul.const_data_ptr<int32_t>(), order,
                  kk};
}

namespace {

template <typename T>
at::Tensor to_tensor(const std::vector<T>& v, at::ScalarType dtype, c10::Device device) {
  // One element at least, so data pointers are valid even for an empty plan (k = 1 with a disk
  // never is empty, but a plan with no entries must still be safe to read its row pointers).
  at::Tensor t = at::empty({static_cast<int64_t>(std::max<size_t>(v.size(), 1))}, at::TensorOptions().dtype(dtype));
  if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(T));
  return device.is_cpu() ? t : t.to(device);
}

DevicePlan make_device_plan(const HostPlan& h, c10::Device device) {
  std::vector<float> fw(h.fwd_w.begin(), h.fwd_w.end()), bw(h.bwd_w.begin(), h.bwd_w.end());
  DevicePlan d;
  d.order = h.order;
  d.kk = h.kk;
  d.fwd_ptr = to_tensor(h.fwd_ptr, at::kInt, device);
  d.fwd_src = to_tensor(h.fwd_src, at::kInt, device);
  d.fwd_w64 = to_tensor(h.fwd_w, at::kDouble, device);
  d.fwd_w32 = to_tensor(fw, at::kFloat, device);
  d.bwd_ptr = to_tensor(h.bwd_ptr, at::kInt, device);
  d.bwd_g = to_tensor(h.bwd_g, at::kInt, device);
  d.bwd_o = to_tensor(h.bwd_o, at::kInt, device);
  d.bwd_w64 = to_tensor(h.bwd_w, at::kDouble, device);
  d.bwd_w32 = to_tensor(bw, at::kFloat, device);
  d.mul = to_tensor(h.mul, at::kInt, device);
  d.inv_mul = to_tensor(h.inv_mul, at::kInt, device);
  return d;
}

}  // namespace

const DevicePlan& cached_plan(const PlanKey& key, c10::Device device) {
  using Key = std::tuple<int64_t, bool, int64_t, bool, int, int>;
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<DevicePlan>> cache;
  const Key ck{key.rotations, key.reflections, key.k, key.disk, static_cast<int>(device.type()),
               static_cast<int>(device.has_index() ? device.index() : -1)};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(ck);
  if (it == cache.end()) {
    it = cache.emplace(ck, std::make_unique<DevicePlan>(make_device_plan(build_plan(key), device))).first;
  }
  return *it->second;
}

}  // namespace gconv_ext
