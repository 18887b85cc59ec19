// The AVX2 build of the CPU loops (cpu_kernels.inc), used on CPUs that have AVX2 (cpu_capability.cpp).
// -ffp-contract=off keeps every a*b+c two roundings (no FMA), so the wider registers change speed only.
#include "cpu_kernels.h"

#if GCONV_EXT_CPU_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2")
#define GCONV_EXT_CPU_CAPABILITY avx2
#define GCONV_EXT_CPU_TABLE kCpuKernelsAvx2
#define GCONV_EXT_VEC_BYTES 32  // vec.inc: 8-lane vectors
#include "cpu_kernels.inc"
#pragma GCC pop_options
#endif
