// Torch-free PQ lookup-table linear kernels. Declarations of every per-ISA copy; see
// pq_lookup_kernel.cpp and csrc/common/pq_layout.h.
#pragma once
#include <cstdint>

namespace compressops::cpu::kernels {

// fp32 tables: table[m][s][c] = sum_j x[m][s*d + j] * cb_t[s][j][c] for s < s_pad.
// Work units u = m * chunks + chunk, chunk = a run of kPqTableChunk subspaces.
constexpr int64_t kPqTableChunk = 64;
struct PqTableParams {
  const float* x;     // [m, s_pad * d] fp32, row stride ldx (zero padded past K)
  int64_t ldx;
  const float* cb_t;  // [s_pad][d][ncent]
  int64_t s_pad, d, ncent;
  float* table;       // [m][s_pad][ncent]
  int64_t m;
};

// k=16: quantize each row's fp32 table to uint8 with one scale per row and one offset per
// subspace: qtab[m][s][c] = round((table - off_s) / scale), off_s = min_c table[m][s][c],
// scale = max_s (max_c - min_c) / 255 (a zero range gives scale 1 and q = 0).
// offsum[m] = sum_s off_s. Then y = scale * sum_s q[s][code] + offsum, and
// |y - y_exact| <= S * scale / 2 (+ fp32 rounding of the fp32 table and of the sums).
struct PqQuantizeParams {
  const float* table;  // [m][s_pad][16]
  int64_t s_pad;
  uint8_t* qtab;       // [m][s_pad][16]
  float* scale;        // [m]
  float* offsum;       // [m]
};

// k=16 scan: out[m][n] = scale[m] * sum_s qtab[m][s][code(n, s)] + offsum[m] + bias[n] for the
// blocks of 32 output rows [nb_begin, nb_end). out has row stride ldo >= n_pad.
struct Pq16ScanParams {
  const uint8_t* codes;  // [n_pad/32][s_pad/2][32]
  const uint8_t* qtab;   // [m][s_pad][16]
  const float* scale;
  const float* offsum;
  const float* bias;     // [n] or nullptr
  float* out;
  int64_t ldo;
  int64_t m, n, s_pad;
};

// k=256 scan: out[m][n] = sum_s table[m][s][code(n, s)] + bias[n], fp32, for the blocks of 8
// output rows [nb_begin, nb_end).
struct Pq256ScanParams {
  const uint8_t* codes;  // [n_pad/8][s][8]
  const float* table;    // [m][s][256]
  const float* bias;
  float* out;
  int64_t ldo;
  int64_t m, n, s;
};

#define COMPRESSOPS_DECLARE_PQ(SUFFIX)                                                  \
  bool pq_build_tables_##SUFFIX(const PqTableParams&, int64_t unit_begin, int64_t unit_end); \
  bool pq16_quantize_tables_##SUFFIX(const PqQuantizeParams&, int64_t m_begin, int64_t m_end); \
  bool pq16_scan_##SUFFIX(const Pq16ScanParams&, int64_t nb_begin, int64_t nb_end);        \
  bool pq256_scan_##SUFFIX(const Pq256ScanParams&, int64_t nb_begin, int64_t nb_end);

COMPRESSOPS_DECLARE_PQ(SCALAR)
COMPRESSOPS_DECLARE_PQ(AVX2)
#undef COMPRESSOPS_DECLARE_PQ

}  // namespace compressops::cpu::kernels
