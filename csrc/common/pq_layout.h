// The PQ (product-quantization) linear pack: what follows the shared pack header
// (common/pack_header.h), shared by every PQ kernel. compressops/formats/pq.py is its Python twin
// (its docstring is the spec; tests compare the two packers byte for byte):
//
//   header    : tag "pq", version kPqLayoutVersion, N, K, fields (d, k, S) = (subvector_dim,
//               num_centroids, num_subspaces = ceil(K / d))
//   codebooks : float32 [S_pad][d][k]   (transposed: a table build reads k centroids' j-th
//               component contiguously; subspaces s >= S are zero)
//   codes     : k=16:  uint8 [N_pad/32][S_pad/2][32]  byte j of pair p = code(n, 2p) | code(n, 2p+1) << 4
//                      for n = 32 * block + j  (one 32-byte load -> one vpshufb per subspace)
//               k=256: uint8 [ceil(S/16)][N_pad/8][sc][8], sc = min(16, S - 16 * chunk): chunks of 16
//                      subspaces (tables are built one chunk at a time into scratch), inside a chunk
//                      8 rows' codes of one subspace side by side, blocks contiguous
//
// A code is 4 bits (k=16) or a byte (k=256), so it is below k whatever the bytes hold: a table of
// k entries per subspace is never indexed past its end.
// The layout depends on no ISA, so one pack serves every CPU level.
#pragma once
#include <array>
#include <cstdint>

#include "pack_header.h"

namespace compressops {

constexpr const char* kPqTag = "pq";
constexpr uint32_t kPqLayoutVersion = 1;
constexpr int64_t kPq16BlockRows = 32;
constexpr int64_t kPq256BlockRows = 8;
constexpr int64_t kPq256ChunkSubspaces = 16;

inline bool pq_valid_d(int64_t d) { return d == 1 || d == 2 || d == 4 || d == 8 || d == 16; }
inline bool pq_valid_ncent(int64_t k) { return k == 16 || k == 256; }
inline int64_t pq_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The layout of the pack of an [n, k_in] weight with subvectors of d and ncent centroids (d and
// ncent valid, 1 <= n, k_in < 2^31: every size below fits int64).
struct PqLayout {
  int64_t n, k_in, d, ncent;
  int64_t s;      // subspaces, ceil(K / d)
  int64_t s_pad;  // s rounded up to 2 for k=16, s for k=256
  int64_t n_pad;  // n rounded up to the block rows (32 or 8)

  int64_t codebook_bytes() const { return 4 * s_pad * d * ncent; }
  int64_t code_bytes() const { return ncent == 16 ? n_pad * s_pad / 2 : n_pad * s_pad; }
  // Header included, before the padding to whole rows.
  int64_t bytes() const { return kPackHeaderBytes + codebook_bytes() + code_bytes(); }
  std::array<int64_t, 3> fields() const { return {d, ncent, s}; }
};

inline PqLayout pq_layout(int64_t n, int64_t k_in, int64_t d, int64_t ncent) {
  const int64_t s = (k_in + d - 1) / d;
  const int64_t block_rows = ncent == 16 ? kPq16BlockRows : kPq256BlockRows;
  return {n, k_in, d, ncent, s, ncent == 16 ? pq_round_up(s, 2) : s, pq_round_up(n, block_rows)};
}

}  // namespace compressops
