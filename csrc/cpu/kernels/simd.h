// The vector intrinsics a kernel file uses: the compiler's own, or, in an emulated build (the
// avx512/avx512_vnni/amx kernel files compiled again at the AVX2 baseline), SIMDe's portable
// implementations of the AVX-512 family under their Intel names plus our AMX emulation. Kernel files
// include this instead of <immintrin.h>, so one source serves both builds unchanged.
#pragma once

#include <immintrin.h>

#if defined(COMPRESSOPS_EMULATED)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include "simde_extras.h"
#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AMX
#include "../emulation/amx.h"
#endif
#endif
