// The column range check of a CSR pack, shared by the level files (each compiles it with its own
// flags) and the host (the dense route's decode and empty batches). Internal linkage: every
// object keeps its own copy, so the baseline host never runs a copy compiled for AVX2.
#pragma once
#include <algorithm>
#include <cstdint>

namespace compressops::cpu::kernels {
namespace {

// Whether every column of nonzeros [j0, j1) lies in [0, k): one max over them, read as unsigned
// so that a negative int32 column counts as >= 2^31 > k. A plain loop, which each level's flags
// vectorize (vpmaxuw/vpmaxud at avx2: the rows' columns then sit in cache for the kernel). 16-bit
// columns cannot reach past k = 65536.
inline bool columns_in_range(const void* cols, int col_bytes, int64_t k, int64_t j0, int64_t j1) {
  if (col_bytes == 2) {
    if (k >= 65536) return true;
    const uint16_t* c = static_cast<const uint16_t*>(cols);
    uint16_t top = 0;
    for (int64_t j = j0; j < j1; ++j) top = std::max(top, c[j]);
    return top < k;
  }
  const uint32_t* c = static_cast<const uint32_t*>(cols);
  uint32_t top = 0;
  for (int64_t j = j0; j < j1; ++j) top = std::max(top, c[j]);
  return top < k;
}

}  // namespace
}  // namespace compressops::cpu::kernels
