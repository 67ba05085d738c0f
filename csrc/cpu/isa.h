// CPU instruction-set levels, detected once at run time (never from the build machine).
#pragma once
#include <string>

namespace compressops::cpu {

// Ordered: each level implies every level below it.
enum class CpuIsa : int {
  kScalar = 0,
  kAVX2 = 1,        // AVX2 + FMA + F16C + BMI2 + POPCNT, OS saves YMM state
  kAVX512 = 2,      // AVX-512 F/BW/DQ/VL/CD, OS saves ZMM state
  kAVX512VNNI = 3,  // + VNNI, VPOPCNTDQ, VBMI, VBMI2, BITALG
  kAMX = 4,         // + AMX-TILE/INT8/BF16, and Linux granted the tile state
};

const char* isa_name(CpuIsa isa);
// Parses a level name as users write it; throws c10::Error naming the valid choices.
CpuIsa parse_isa(const std::string& name);
// What the hardware and OS support (cpuid + xgetbv + arch_prctl for AMX). Computed once.
CpuIsa detected_isa();
// min(detected, COMPRESSOPS_ISA, ATEN_CPU_CAPABILITY) unless set_active_isa overrode it.
CpuIsa active_isa();
// Force a level for tests and benchmarks; throws if above what this CPU has.
void set_active_isa(CpuIsa isa);
// Which levels this build compiled kernels for (the per-ISA object libraries that exist).
bool isa_compiled(CpuIsa isa);

}  // namespace compressops::cpu
