// Included by every file in csrc/cpu/kernels/. Those files are compiled once per ISA level with
// -DCOMPRESSOPS_ISA_SUFFIX=<LEVEL> -DCOMPRESSOPS_ISA_LEVEL=<n>; COMPRESSOPS_KERNEL pastes the
// level into each exported symbol so the copies never collide (one definition per name).
#pragma once

#define COMPRESSOPS_CAT_(a, b) a##_##b
#define COMPRESSOPS_CAT(a, b) COMPRESSOPS_CAT_(a, b)
#define COMPRESSOPS_KERNEL(name) COMPRESSOPS_CAT(name, COMPRESSOPS_ISA_SUFFIX)

// Numeric values of COMPRESSOPS_ISA_LEVEL; the same order as compressops::cpu::CpuIsa.
#define COMPRESSOPS_LEVEL_SCALAR 0
#define COMPRESSOPS_LEVEL_AVX2 1
#define COMPRESSOPS_LEVEL_AVX512 2
#define COMPRESSOPS_LEVEL_AVX512_VNNI 3
#define COMPRESSOPS_LEVEL_AMX 4
