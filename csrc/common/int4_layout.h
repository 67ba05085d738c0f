// The int4 pack: the layout every int4 kernel reads (Python twin: compressops/formats/int4.py).
//
// Canonical int4 weight (compressops/formats/int4.py): uint8 [N, K_pad/2], two nibbles a byte
// (low nibble = even k), K_pad = K rounded up to the group size, fp32 scales [N, G] and zero
// points uint8 [N, G] (asymmetric) or 8 (symmetric); w[n, k] = (q[n, k] - z[n, g]) * s[n, g].
//
// The pack keeps eight output channels side by side and everything one group of one column block
// needs in one contiguous run, so a kernel streams it front to back:
//
//   header : the shared pack header (pack_header.h), tag "int4", version kInt4PackVersion,
//            N, K, fields (group_size, G, symmetric 0/1)
//   body   : for each block of kInt4NR = 8 columns (N_pad / 8 blocks), for each group g:
//              weights  group_size * 4 bytes: group_size / 8 chunks of 32 bytes; in chunk j,
//                       byte 4 * c + i holds column c's k = 8j + i in its low nibble and
//                       k = 8j + 4 + i in its high nibble (k counted inside the group). So
//                       (v & 15) and (v >> 4 & 15) are each 8 int32 lanes of 4 consecutive k:
//                       the operand of vpmaddubsw against 4 broadcast activation bytes.
//              scale    float [8]: s[n, g], the canonical scale's bytes
//              zscale   float [8]: z[n, g] * s[n, g] (rounded to float)
//            padded columns (n >= N) hold q = 0, s = 0, zscale = 0.
//   zeros  : asymmetric packs only: the canonical zero points, uint8 [N, G] row-major. The kernels
//            never read them; they are there because z * s cannot always give z back (s = 0,
//            subnormal or not finite), and a module that holds only the pack must return its
//            canonical tensors bit for bit.
// The pack is uint8 [N, R] (pack_shape with rows (N)), zero padded at the end.
//
// The layout depends on no ISA, so one pack serves every CPU level.
#pragma once
#include <array>
#include <cstdint>

#include "pack_header.h"

namespace compressops {

constexpr const char* kInt4PackTag = "int4";
constexpr uint32_t kInt4PackVersion = 2;
constexpr int64_t kInt4NR = 8;  // output channels per block: one ymm of fp32/int32 lanes

inline bool int4_valid_group_size(int64_t g) { return g == 32 || g == 64 || g == 128 || g == 256; }

inline int64_t int4_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

inline int64_t int4_groups(int64_t k, int64_t group_size) { return int4_round_up(k, group_size) / group_size; }

// Bytes of one (block, group) run: weights + 8 scales + 8 zero*scale.
inline int64_t int4_group_stride(int64_t group_size) { return group_size * 4 + 2 * kInt4NR * 4; }

// Bytes of the body (the kernels' part, after the header).
inline int64_t int4_body_bytes(int64_t n, int64_t k, int64_t group_size) {
  return int4_round_up(n, kInt4NR) / kInt4NR * int4_groups(k, group_size) * int4_group_stride(group_size);
}

// Bytes of the whole pack before row padding: header, body and, when asymmetric, the zero points.
inline int64_t int4_packed_bytes(int64_t n, int64_t k, int64_t group_size, bool symmetric) {
  return kPackHeaderBytes + int4_body_bytes(n, k, group_size) + (symmetric ? 0 : n * int4_groups(k, group_size));
}

// The header's family fields of a pack with these dimensions.
inline std::array<int64_t, 3> int4_pack_fields(int64_t k, int64_t group_size, bool symmetric) {
  return {group_size, int4_groups(k, group_size), symmetric ? 1 : 0};
}

}  // namespace compressops
