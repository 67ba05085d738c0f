// Per-op tables of per-ISA kernel symbols, and the walk down the fallback chain.
//
// A kernel is declared once with COMPRESSOPS_DECLARE_KERNEL(name, type) (in its family's kernel
// header): that declares name_<SUFFIX> and name_<SUFFIX>_EMU for every level of isa_levels.def as
// weak symbols. A kernel file compiled at a level defines the ones it has; the rest stay null. So
// COMPRESSOPS_KERNEL_TABLE(name) fills a table from whatever the build defined, and a family gains
// a level by defining its symbols in the kernel file for that level: no host code lists levels.
//
// Selection starts at the active level and walks down to the first level the op has whose kernel
// accepts the shape. It runs once per call, outside the parallel loops.
#pragma once
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "isa.h"

#define COMPRESSOPS_DECLARE_KERNEL_AT_(ENUM, SUFFIX, NAME, EMULATED, FN, TYPE) \
  extern TYPE FN##_##SUFFIX __attribute__((weak));                            \
  extern TYPE FN##_##SUFFIX##_EMU __attribute__((weak));
// Declares every level's symbol of kernel FN, whose function type is TYPE.
#define COMPRESSOPS_DECLARE_KERNEL(FN, TYPE) COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_DECLARE_KERNEL_AT_, FN, TYPE)

#define COMPRESSOPS_TABLE_NATIVE_AT_(ENUM, SUFFIX, NAME, EMULATED, FN, UNUSED) FN##_##SUFFIX,
#define COMPRESSOPS_TABLE_EMU_AT_(ENUM, SUFFIX, NAME, EMULATED, FN, UNUSED) FN##_##SUFFIX##_EMU,
// {native symbols, emulated symbols} of kernel FN, indexed by CpuIsa (null where not built).
#define COMPRESSOPS_KERNEL_TABLE(FN)                                  \
  {                                                                   \
    {COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_TABLE_NATIVE_AT_, FN, _)}, \
    {                                                                 \
      COMPRESSOPS_FOR_EACH_ISA_LEVEL(COMPRESSOPS_TABLE_EMU_AT_, FN, _)  \
    }                                                                 \
  }

namespace compressops::cpu {

template <typename Fn>
struct KernelTable {
  // Indexed by CpuIsa; nullptr where the op has no kernel for that level or it was not compiled.
  std::array<Fn, kNumIsaLevels> native{};
  std::array<Fn, kNumIsaLevels> emulated{};

  // The kernel for these params: starting at `from`, the first level down the chain whose kernel
  // accepts them. Under an emulated choice, levels with an emulated build use it; the levels below
  // (avx2, scalar: the emulation's baseline) run natively. Kernels take (params, begin, end) and
  // return false to decline a shape; asking with an empty range does no work, so this probe runs
  // once, before any parallel loop. The scalar kernel never declines.
  template <typename Params>
  std::pair<Fn, IsaChoice> select(IsaChoice from, const Params& params) const {
    for (int l = static_cast<int>(from.level); l >= 0; --l) {
      const bool emu = from.emulated && isa_emulatable(static_cast<CpuIsa>(l));
      const Fn fn = emu ? emulated[l] : native[l];
      if (fn && fn(params, 0, 0)) return {fn, {static_cast<CpuIsa>(l), emu}};
    }
    return {nullptr, {}};
  }

  // The first kernel down the chain from `from`, for kernels that take no params to probe.
  std::pair<Fn, IsaChoice> first(IsaChoice from) const {
    for (int l = static_cast<int>(from.level); l >= 0; --l) {
      const bool emu = from.emulated && isa_emulatable(static_cast<CpuIsa>(l));
      const Fn fn = emu ? emulated[l] : native[l];
      if (fn) return {fn, {static_cast<CpuIsa>(l), emu}};
    }
    return {nullptr, {}};
  }

  // Names of the levels with a kernel, lowest first ("avx512_vnni" when built natively or emulated).
  std::vector<std::string> levels() const {
    std::vector<std::string> out;
    for (int l = 0; l < kNumIsaLevels; ++l) {
      if (native[l] || emulated[l]) out.emplace_back(isa_name(static_cast<CpuIsa>(l)));
    }
    return out;
  }
};

}  // namespace compressops::cpu
