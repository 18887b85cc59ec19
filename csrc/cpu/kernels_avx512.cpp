// The AVX-512 build of the CPU loops (cpu_kernels.inc), used on CPUs that have AVX-512 F/BW/DQ/VL
// (cpu_capability.cpp). 512-bit vectors are preferred explicitly (GCC's generic tuning would split some
// loops into 256-bit halves). With -ffp-contract=off no a*b+c becomes an FMA, so the wider
// registers change speed only.
#include "cpu_kernels.h"

#if GCONV_EXT_CPU_DISPATCH
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=512")
#define GCONV_EXT_CPU_CAPABILITY avx512
#define GCONV_EXT_CPU_TABLE kCpuKernelsAvx512
#define GCONV_EXT_VEC_BYTES 64  // vec.inc: 16-lane vectors
#define GCONV_EXT_VEC_AVX512 1  // vec.inc's bfloat16 conversions as single AVX-512 instructions
#include "cpu_kernels.inc"
#pragma GCC pop_options
#endif
