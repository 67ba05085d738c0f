// CPU instruction-set levels, detected once at run time (never from the build machine).
#pragma once
#include <optional>
#include <string>

#include "isa_levels.def"

namespace compressops::cpu {

// Ordered: each level implies every level below it.
#define COMPRESSOPS_ISA_ENUM_(ENUM, SUFFIX, NAME, EMULATED, ...) ENUM,
enum class CpuIsa : int { COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_ISA_ENUM_, _) };
#undef COMPRESSOPS_ISA_ENUM_

#define COMPRESSOPS_ISA_COUNT_(ENUM, SUFFIX, NAME, EMULATED, ...) +1
constexpr int kNumIsaLevels = 0 COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_ISA_COUNT_, _);
#undef COMPRESSOPS_ISA_COUNT_

// A level and whether its kernels run natively or from the emulated build (the same kernel
// source compiled at the AVX2 baseline against SIMDe and our AMX emulation; see isa_levels.def).
// Emulation is only ever chosen on request (COMPRESSOPS_ISA=<level>+emulated, set_active_isa),
// never by detection: it is a test tool, and its speed means nothing.
struct IsaChoice {
  CpuIsa level = CpuIsa::kScalar;
  bool emulated = false;
};

const char* isa_name(CpuIsa isa);
// "avx2", or "amx+emulated".
std::string isa_choice_name(IsaChoice choice);
// Parses a level name as users write it, with an optional "+emulated"; throws c10::Error naming
// the valid choices.
IsaChoice parse_isa_choice(const std::string& name);
// What the hardware and OS support (cpuid + xgetbv + arch_prctl for AMX). Computed once.
CpuIsa detected_isa();
// The calling thread's level (set_thread_isa) if it has one, else min(detected, COMPRESSOPS_ISA,
// ATEN_CPU_CAPABILITY) unless set_active_isa overrode it; an emulated choice from COMPRESSOPS_ISA,
// set_active_isa or set_thread_isa is kept as asked. Ops call it once per call, on the calling
// thread, before any parallel loop.
IsaChoice active_isa();
// Force a level for tests and benchmarks (process-wide). Throws if a native level is above what
// this CPU has, or if an emulated level has no emulated build.
void set_active_isa(IsaChoice choice);
// Force a level for the calling thread only (same checks), or clear it (nullopt): what the Python
// cpu_isa() context uses, so contexts in two threads cannot leave the process on another level.
void set_thread_isa(std::optional<IsaChoice> choice);
// The calling thread's forced level, if any.
std::optional<IsaChoice> thread_isa();
// Whether this build compiled kernels for the level (natively, or its emulated build).
bool isa_compiled(CpuIsa isa);
bool isa_emulation_compiled(CpuIsa isa);
// Whether the level has an emulated build at all (isa_levels.def), compiled or not.
bool isa_emulatable(CpuIsa isa);

}  // namespace compressops::cpu
