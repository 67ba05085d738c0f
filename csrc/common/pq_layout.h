// Prepacked PQ (product-quantization) linear layout, shared by every PQ kernel.
// Mirrors compressops/formats/pq.py (the docstring there is the spec; tests compare the packers):
//
//   header    : PqPackedHeader (64 bytes)
//   codebooks : float32 [S_pad][d][k]   (transposed: a table build reads k centroids' j-th
//               component contiguously; subspaces s >= S are zero)
//   codes     : k=16:  uint8 [N_pad/32][S_pad/2][32]  byte j of pair p = code(n, 2p) | code(n, 2p+1) << 4
//                      for n = 32 * block + j  (one 32-byte load -> one vpshufb per subspace)
//               k=256: uint8 [ceil(S/16)][N_pad/8][sc][8], sc = min(16, S - 16 * chunk): chunks of 16
//                      subspaces (tables are built one chunk at a time into scratch), inside a chunk
//                      8 rows' codes of one subspace side by side, blocks contiguous
//
// The layout depends on no ISA, so one pack serves every CPU level.
#pragma once
#include <cstdint>

namespace compressops {

constexpr int32_t kPqPackMagic = 0x51504350;  // "PCPQ"
constexpr int32_t kPqPackVersion = 1;
constexpr int64_t kPqHeaderBytes = 64;
constexpr int64_t kPq16BlockRows = 32;
constexpr int64_t kPq256BlockRows = 8;
constexpr int64_t kPq256ChunkSubspaces = 16;

struct PqPackedHeader {
  int32_t magic;
  int32_t version;
  int32_t n;      // output features
  int32_t k_in;   // input features (K)
  int32_t s;      // subspaces, ceil(K / d)
  int32_t d;      // subvector dimension
  int32_t ncent;  // centroids per subspace: 16 or 256
  int32_t n_pad;  // n rounded up to the block rows (32 or 8)
  int32_t s_pad;  // s rounded up to 2 for k=16, s for k=256
  int32_t reserved[7];
};
static_assert(sizeof(PqPackedHeader) == kPqHeaderBytes, "header must stay 64 bytes");

inline int64_t pq_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t pq_block_rows(int64_t ncent) { return ncent == 16 ? kPq16BlockRows : kPq256BlockRows; }
inline int64_t pq_s_pad(int64_t s, int64_t ncent) { return ncent == 16 ? pq_round_up(s, 2) : s; }
inline int64_t pq_codebook_bytes(int64_t s_pad, int64_t d, int64_t ncent) { return 4 * s_pad * d * ncent; }
inline int64_t pq_code_bytes(int64_t n_pad, int64_t s_pad, int64_t ncent) {
  return ncent == 16 ? n_pad * s_pad / 2 : n_pad * s_pad;
}
inline int64_t pq_packed_bytes(int64_t n, int64_t k_in, int64_t d, int64_t ncent) {
  const int64_t s = (k_in + d - 1) / d;
  const int64_t s_pad = pq_s_pad(s, ncent);
  const int64_t n_pad = pq_round_up(n, pq_block_rows(ncent));
  return kPqHeaderBytes + pq_codebook_bytes(s_pad, d, ncent) + pq_code_bytes(n_pad, s_pad, ncent);
}

}  // namespace compressops
