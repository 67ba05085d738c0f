// Prepacked int8 weight layout shared by every int8 kernel (CPU now, CUDA later); the Python twin
// is compressops/formats/int8.py, which documents the format.
//
// The canonical int8 weight is row-major [N, K]. Kernels want output channels side by side and
// four consecutive k values per lane, because that is the operand shape of the dot-product
// instructions we target (x86 vpdpbusd and the AVX2 vpmaddubsw+vpmaddwd pair both reduce 4 bytes
// into one int32 lane). So a pack (uint8 [N, R], pack_header.h) is
//
//   header   : the shared pack header (64 bytes): tag "int8", version kInt8PackVersion, N, K,
//              fields (kInt8NR, kInt8KR, 0)
//   weights  : int8 [Npad / kInt8NR][Kpad / kInt8KR][kInt8NR][kInt8KR], zero padded
//   col_sums : int32 [Npad], sum over k of the weight of column n; lets a kernel feed unsigned
//              activations (x + 128) to vpdpbusd and subtract 128 * col_sum afterwards
//   padding  : zeros up to a whole number of rows
//
// The layout depends on no ISA, so one pack serves every CPU level and a process can change level
// at run time without repacking. All-zero layout bytes are the pack of the all-zero weight.
#pragma once
#include <array>
#include <cstdint>

#include "pack_header.h"

namespace compressops {

constexpr const char* kInt8PackTag = "int8";
constexpr uint32_t kInt8PackVersion = 1;
constexpr int64_t kInt8NR = 16;  // output channels per block: one zmm, two ymm of int32 lanes
constexpr int64_t kInt8KR = 4;   // k values per lane
// Largest K whose dot products cannot overflow int32: 131072 * 127 * 127 < 2^31.
constexpr int64_t kInt8MaxK = 131072;

inline int64_t int8_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The header's family fields: the blocking, so a pack of another blocking is refused by name.
inline std::array<int64_t, 3> int8_pack_fields() { return {kInt8NR, kInt8KR, 0}; }

// Bytes of the pack of an [n, k] weight, header included, before the row padding.
inline int64_t int8_packed_bytes(int64_t n, int64_t k) {
  const int64_t n_pad = int8_round_up(n, kInt8NR);
  const int64_t k_pad = int8_round_up(k, kInt8KR);
  return kPackHeaderBytes + n_pad * k_pad + n_pad * static_cast<int64_t>(sizeof(int32_t));
}

// Byte offset of col_sums in the pack of an [n, k] weight.
inline int64_t int8_col_sums_offset(int64_t n, int64_t k) {
  return kPackHeaderBytes + int8_round_up(n, kInt8NR) * int8_round_up(k, kInt8KR);
}

// The header of a pack of an [n, k] weight.
inline PackHeader int8_packed_header(int64_t n, int64_t k) {
  return make_pack_header(kInt8PackTag, kInt8PackVersion, n, k, int8_pack_fields());
}

}  // namespace compressops
