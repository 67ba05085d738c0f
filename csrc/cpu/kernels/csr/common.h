// CSR sparse linear kernels: what the level files share. Each level file includes this header, so
// its code is compiled again with that level's flags; the anonymous namespace keeps every level's
// copy to its own object (with external linkage the linker would keep one copy, and the scalar
// kernel could end up running code compiled for AVX2).
#pragma once
#include <cstring>

#include "columns.h"
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

// The check_columns step (CsrParams) of the transposed kernels: one pass over all their rows'
// columns before they start (they run from several batch rows on, which share the pass's cost).
inline bool rows_columns_ok(const CsrParams& p, int64_t n_begin, int64_t n_end) {
  return !p.check_columns || columns_in_range(p.cols, p.col_bytes, p.k, p.rowptr[n_begin], p.rowptr[n_end]);
}

// Under `check` (CsrParams::check_columns) a column outside [0, k) sets *bad and ends the dot
// product before x is read there (a negative int32 column, read as unsigned, counts as too large).
inline float dot_scalar(const CsrParams& p, const float* x, int64_t j0, int64_t j1, bool check, bool* bad) {
  float acc = 0.0f;
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t c = col(p, j);
    if (check && static_cast<uint64_t>(c) >= static_cast<uint64_t>(p.k)) {
      *bad = true;
      return 0.0f;
    }
    acc += val(p, j) * x[c];
  }
  return acc;
}

// The row kernel's walk (rows of x, no transposed block): out[m, n] = dot(x row m, j0, j1, check,
// &bad) + bias[n] over row n's nonzeros [j0, j1), with the dot product of the caller's level.
// Under check_columns the first batch row's dot products check each column before reading x there
// (inside their loop, where the check overlaps the loads: a separate pass over the columns cost
// 10-18% at batch 1). Returns false at the first row with a column outside [0, k).
template <typename Dot>
inline bool for_each_output(const CsrParams& p, int64_t n_begin, int64_t n_end, Dot&& dot) {
  bool bad = false;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t j0 = p.rowptr[n], j1 = p.rowptr[n + 1];
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.ldx;
      float v = dot(x, j0, j1, p.check_columns && m == 0, &bad);
      if (bad) return false;
      if (p.bias) v = v + p.bias[n];
      p.out[m * p.ldo + n] = v;
    }
  }
  return true;
}

}  // namespace
}  // namespace compressops::cpu::kernels
