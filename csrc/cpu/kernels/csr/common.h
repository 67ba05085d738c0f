// CSR sparse linear kernels: what the level files share. Each level file includes this header, so
// its code is compiled again with that level's flags; the anonymous namespace keeps every level's
// copy to its own object (with external linkage the linker would keep one copy, and the scalar
// kernel could end up running code compiled for AVX2).
#pragma once
#include <cstring>

#include "kernel.h"
#include "../bf16.h"

namespace compressops::cpu::kernels {
namespace {

inline float val(const CsrParams& p, int64_t j) {
  return p.values_bf16 ? bf16_to_f32(static_cast<const uint16_t*>(p.values)[j])
                       : static_cast<const float*>(p.values)[j];
}

inline int64_t col(const CsrParams& p, int64_t j) {
  return p.col_bytes == 2 ? static_cast<int64_t>(static_cast<const uint16_t*>(p.cols)[j])
                          : static_cast<int64_t>(static_cast<const int32_t*>(p.cols)[j]);
}

inline float dot_scalar(const CsrParams& p, const float* x, int64_t j0, int64_t j1) {
  float acc = 0.0f;
  for (int64_t j = j0; j < j1; ++j) acc += val(p, j) * x[col(p, j)];
  return acc;
}

// The row kernel's walk (rows of x, no transposed block): out[m, n] = dot(x row m, j0, j1) +
// bias[n] over row n's nonzeros [j0, j1), with the dot product of the caller's level.
template <typename Dot>
inline void for_each_output(const CsrParams& p, int64_t n_begin, int64_t n_end, Dot&& dot) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t j0 = p.rowptr[n], j1 = p.rowptr[n + 1];
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.ldx;
      float v = dot(x, j0, j1);
      if (p.bias) v = v + p.bias[n];
      p.out[m * p.ldo + n] = v;
    }
  }
}

}  // namespace
}  // namespace compressops::cpu::kernels
