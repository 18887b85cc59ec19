// The baseline build of the CPU loops (cpu_kernels.inc): the compiler's default instruction set (SSE2 on
// x86-64, NEON on aarch64), no target pragma. It runs on every CPU, and is the only variant off GCC x86-64.
#include "cpu_kernels.h"

#define GCONV_EXT_CPU_CAPABILITY default
#define GCONV_EXT_CPU_TABLE kCpuKernelsDefault
#include "cpu_kernels.inc"
