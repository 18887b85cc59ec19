// Picks the CPU loops' variant (cpu_kernels.h) once, at first use: the best instruction set this build has and
// this CPU supports, lowered (never raised) by GCONV_EXT_CPU_CAPABILITY=default|avx2|avx512, as ATen's
// ATEN_CPU_CAPABILITY lowers its own kernels. Tests and benchmarks switch it with set_cpu_capability (Python:
// gconv_ext._C.set_cpu_capability).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"

namespace gconv_ext {
namespace {

struct Variant {
  const char* name;
  const CpuKernels* kernels;
};

// The variants this CPU can run, lowest first.
struct Supported {
  Variant v[3];
  int n = 0;
  const char* names[3];
};

const Supported& supported() {
  static const Supported s = [] {
    Supported r;
    r.v[r.n++] = {"default", &kCpuKernelsDefault};
#if GCONV_EXT_CPU_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) r.v[r.n++] = {"avx2", &kCpuKernelsAvx2};
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      r.v[r.n++] = {"avx512", &kCpuKernelsAvx512};
    }
#endif
    for (int i = 0; i < r.n; ++i) r.names[i] = r.v[i].name;
    return r;
  }();
  return s;
}

const CpuKernels* initial() {
  const Supported& s = supported();
  const CpuKernels* best = s.v[s.n - 1].kernels;
  const char* env = std::getenv("GCONV_EXT_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  // A name below the best: that one. The best or a higher one (or an unknown name): the best, as ATen does.
  for (int i = 0; i < s.n; ++i) {
    if (std::strcmp(env, s.v[i].name) == 0) return s.v[i].kernels;
  }
  return best;
}

std::atomic<const CpuKernels*>& current() {
  static std::atomic<const CpuKernels*> k{initial()};
  return k;
}

}  // namespace

const CpuKernels& cpu_kernels() { return *current().load(std::memory_order_relaxed); }

const char* const* supported_cpu_capabilities(int* count) {
  *count = supported().n;
  return supported().names;
}

bool set_cpu_capability(const char* name) {
  const Supported& s = supported();
  for (int i = 0; i < s.n; ++i) {
    if (std::strcmp(name, s.v[i].name) == 0) {
      current().store(s.v[i].kernels, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

}  // namespace gconv_ext
