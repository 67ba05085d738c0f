// Included by every kernel file. A kernel file csrc/cpu/kernels/<family>/<level>.cpp is compiled at its
// level with -DCOMPRESSOPS_ISA_SUFFIX=<LEVEL> -DCOMPRESSOPS_ISA_LEVEL=<n> (and, for the emulated levels, a
// second time with -DCOMPRESSOPS_ISA_SUFFIX=<LEVEL>_EMU -DCOMPRESSOPS_EMULATED=1); COMPRESSOPS_KERNEL
// pastes the suffix into each exported symbol so the copies never collide (one definition per name),
// and the host's weak declarations (dispatch.h) pick up whichever ones exist.
// CMake also defines COMPRESSOPS_LEVEL_<SUFFIX> = the level's index in isa_levels.def, for
// `#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2` tests in shared headers.
#pragma once

#define COMPRESSOPS_CAT_(a, b) a##_##b
#define COMPRESSOPS_CAT(a, b) COMPRESSOPS_CAT_(a, b)
#define COMPRESSOPS_KERNEL(name) COMPRESSOPS_CAT(name, COMPRESSOPS_ISA_SUFFIX)

#if !defined(COMPRESSOPS_ISA_LEVEL) || !defined(COMPRESSOPS_LEVEL_AVX2)
#error "kernel files are compiled by CMake's per-level object libraries (cmake/isa.cmake)"
#endif
