// Prepacked int4 weight layout shared by every int4 kernel.
//
// Canonical int4 weight (compressops/formats/int4.py): uint8 [N, K_pad/2], two nibbles a byte
// (low nibble = even k), K_pad = K rounded up to the group size, fp32 scales [N, G] and zero
// points [N, G] (asymmetric) or 8 (symmetric); w[n, k] = (q[n, k] - z[n, g]) * s[n, g].
//
// The packed buffer keeps eight output channels side by side and everything one group of one
// column block needs in one contiguous run, so a kernel streams it front to back:
//
//   header : Int4PackedHeader (64 bytes)
//   body   : for each block of kInt4NR = 8 columns (N_pad / 8 blocks), for each group g:
//              weights  group_size * 4 bytes: group_size / 8 chunks of 32 bytes; in chunk j,
//                       byte 4 * c + i holds column c's k = 8j + i in its low nibble and
//                       k = 8j + 4 + i in its high nibble (k counted inside the group). So
//                       (v & 15) and (v >> 4 & 15) are each 8 int32 lanes of 4 consecutive k:
//                       the operand of vpmaddubsw against 4 broadcast activation bytes.
//              scale    float [8]: s[n, g]
//              zscale   float [8]: z[n, g] * s[n, g]
//            padded columns (n >= N) hold q = 0, s = 0, zscale = 0.
//
// The layout depends on no ISA, so one pack serves every CPU level.
#pragma once
#include <cstddef>
#include <cstdint>

namespace compressops {

constexpr int32_t kInt4PackMagic = 0x34493443;  // "C4I4" little endian
constexpr int32_t kInt4PackVersion = 1;
constexpr int64_t kInt4NR = 8;  // output channels per block: one ymm of fp32/int32 lanes
constexpr int64_t kInt4HeaderBytes = 64;

struct Int4PackedHeader {
  int32_t magic;
  int32_t version;
  int32_t n;           // output channels
  int32_t k;           // input channels (x has this many columns)
  int32_t k_pad;       // k rounded up to group_size
  int32_t group_size;  // 32, 64, 128 or 256
  int32_t groups;      // k_pad / group_size
  int32_t n_pad;       // n rounded up to kInt4NR
  int32_t nr;
  int32_t symmetric;   // 1: zero points are all 8 (informational; zscale holds them either way)
  int32_t reserved[6];
};
static_assert(sizeof(Int4PackedHeader) == kInt4HeaderBytes, "header must stay 64 bytes");

inline int64_t int4_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Bytes of one (block, group) run: weights + 8 scales + 8 zero*scale.
inline int64_t int4_group_stride(int64_t group_size) { return group_size * 4 + 2 * kInt4NR * 4; }

inline int64_t int4_packed_bytes(int64_t n, int64_t k, int64_t group_size) {
  const int64_t n_pad = int4_round_up(n, kInt4NR);
  const int64_t groups = int4_round_up(k, group_size) / group_size;
  return kInt4HeaderBytes + (n_pad / kInt4NR) * groups * int4_group_stride(group_size);
}

}  // namespace compressops
