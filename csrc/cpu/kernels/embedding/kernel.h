// Torch-free embedding gathers (compressops/formats/embedding.py): out[t, :] = the dequantized row
// indices[t] of an int8 or int4 table, float32. Memory-bound: each output row reads its table row
// once and writes D floats. Levels: scalar (every gather) and avx2 (int8 and int4 rows, 8 values a
// vector); the levels above fall through to avx2, and the packed int8 gather runs scalar at every
// level (it is bound by the cache lines it touches).
#pragma once
#include <cstdint>

#include "../../dispatch.h"

namespace compressops::cpu::kernels {

struct EmbeddingParams {
  // Exactly one of idx64 / idx32 is set; every index is in [0, rows) (the host checked).
  const int64_t* idx64;
  const int32_t* idx32;
  int64_t d;            // values per output row (the table's D)
  float* out;           // [t, d] row-major
  const float* scale;   // int8: [rows]; int4: [rows, groups]
  // int8_embedding: int8 [rows, d] row-major. int8_embedding_packed: the blocked int8 linear layout,
  // int8 [rows_pad / 16][k_pad / 4][16][4] (csrc/common/int8_layout.h), k_pad = d rounded up to 4.
  const int8_t* w8;
  int64_t k_pad;
  // int4_embedding: uint8 [rows, groups * group_size / 2] codes (low nibble = even d), zeros uint8
  // [rows, groups] or nullptr (z = 8).
  const uint8_t* q4;
  const uint8_t* zeros;
  int64_t groups, group_size;
};

// Each fills output rows [begin, end); returns true (no level declines a shape).
using EmbeddingFn = bool(const EmbeddingParams&, int64_t begin, int64_t end);
COMPRESSOPS_DECLARE_KERNEL(int8_embedding_rows, EmbeddingFn)
COMPRESSOPS_DECLARE_KERNEL(int8_embedding_packed_rows, EmbeddingFn)
COMPRESSOPS_DECLARE_KERNEL(int4_embedding_rows, EmbeddingFn)

}  // namespace compressops::cpu::kernels
