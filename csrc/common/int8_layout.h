// Prepacked int8 weight layout shared by every int8 kernel (CPU now, CUDA later).
//
// The canonical int8 weight is row-major [N, K]. Kernels want output channels side by side and
// four consecutive k values per lane, because that is the operand shape of the dot-product
// instructions we target (x86 vpdpbusd and the AVX2 vpmaddubsw+vpmaddwd pair both reduce 4 bytes
// into one int32 lane). So the packed buffer is
//
//   header   : Int8PackedHeader (64 bytes)
//   weights  : int8 [Npad / kNR][Kpad / kKR][kNR][kKR], zero padded
//   col_sums : int32 [Npad], sum over k of the weight of column n; lets a kernel feed unsigned
//              activations (x + 128) to vpdpbusd and subtract 128 * col_sum afterwards
//
// The layout depends on no ISA, so one pack serves every CPU level and a process can change level
// at run time without repacking.
#pragma once
#include <cstddef>
#include <cstdint>

namespace compressops {

constexpr int32_t kInt8PackMagic = 0x38493843;  // "C8I8" little endian, for a readable hexdump
constexpr int32_t kInt8PackVersion = 1;
constexpr int64_t kInt8NR = 16;  // output channels per block: one zmm, two ymm of int32 lanes
constexpr int64_t kInt8KR = 4;   // k values per lane
constexpr int64_t kInt8HeaderBytes = 64;
// Largest K whose dot products cannot overflow int32: 131072 * 127 * 127 < 2^31.
constexpr int64_t kInt8MaxK = 131072;

struct Int8PackedHeader {
  int32_t magic;
  int32_t version;
  int32_t n;       // output channels
  int32_t k;       // input channels
  int32_t n_pad;   // n rounded up to kInt8NR
  int32_t k_pad;   // k rounded up to kInt8KR
  int32_t nr;
  int32_t kr;
  int32_t reserved[8];
};
static_assert(sizeof(Int8PackedHeader) == kInt8HeaderBytes, "header must stay 64 bytes");

inline int64_t int8_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

inline int64_t int8_packed_bytes(int64_t n, int64_t k) {
  const int64_t n_pad = int8_round_up(n, kInt8NR);
  const int64_t k_pad = int8_round_up(k, kInt8KR);
  return kInt8HeaderBytes + n_pad * k_pad + n_pad * static_cast<int64_t>(sizeof(int32_t));
}

// The header of a pack of an [n, k] weight.
inline Int8PackedHeader int8_packed_header(int64_t n, int64_t k) {
  Int8PackedHeader h{};
  h.magic = kInt8PackMagic;
  h.version = kInt8PackVersion;
  h.n = static_cast<int32_t>(n);
  h.k = static_cast<int32_t>(k);
  h.n_pad = static_cast<int32_t>(int8_round_up(n, kInt8NR));
  h.k_pad = static_cast<int32_t>(int8_round_up(k, kInt8KR));
  h.nr = static_cast<int32_t>(kInt8NR);
  h.kr = static_cast<int32_t>(kInt8KR);
  return h;
}

}  // namespace compressops
