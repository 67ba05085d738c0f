// Per-op tables of per-ISA kernel symbols, and the walk down the fallback chain.
//
// Each op lists the levels it has a kernel for. Selection starts at the active level and walks
// down to the first level the op has whose kernel accepts the shape. It runs once per call,
// outside the parallel loops.
#pragma once
#include <array>
#include <utility>

#include "isa.h"

namespace compressops::cpu {

template <typename Fn>
struct KernelTable {
  // Indexed by CpuIsa; nullptr where the op has no kernel for that level or it was not compiled.
  std::array<Fn, 5> by_level{};

  // The kernel to use for these params: starting at `from`, the first level down the chain whose
  // kernel accepts them. Kernels take (params, begin, end) and return false to decline a shape;
  // asking with an empty range does no work, so this probe runs once, before any parallel loop.
  // The scalar kernel never declines.
  template <typename Params>
  std::pair<Fn, CpuIsa> select(CpuIsa from, const Params& params) const {
    for (int l = static_cast<int>(from); l >= 0; --l) {
      if (by_level[l] && by_level[l](params, 0, 0)) return {by_level[l], static_cast<CpuIsa>(l)};
    }
    return {nullptr, CpuIsa::kScalar};
  }
};

}  // namespace compressops::cpu
