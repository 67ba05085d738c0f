// Torch-free PQ lookup-table linear kernels: their params and every level's symbol. The kernels
// are the level files beside this header; the layout is in csrc/common/pq_layout.h.
#pragma once
#include "../../dispatch.h"
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

// k=256: input rows are taken in tiles of mt (1, 8 or 16) and, per tile and
// slice of `group` subspaces, the table is built as tab[s][c][0:mt] (the mt rows' entries of one
// centroid side by side); each code byte then selects one contiguous mt-vector, so output row n
// of the tile accumulates y[0:mt] += tab[s][code(n, s)][0:mt] with plain vector loads and adds.
// Per-output-row partial sums live in scratch across slices. Work units u = tile * n_parts +
// part (part = a range of 8-row blocks); out[m][n] = sum + bias[n] for m < M, n < N.
struct Pq256BatchParams {
  const uint8_t* codes;  // [ceil(S/16)][n_pad/8][sc][8]
  const float* xt;       // [S * d][ldxt]: x transposed, fp32, zero past K and past M
  int64_t ldxt;          // m_tiles * mt
  const float* cb_t;     // [S][d][256]
  const float* bias;     // [n] or nullptr
  float* out;
  int64_t ldo;
  int64_t m, n, s, d;
  int64_t mt;       // rows per tile: 1, 8 or 16
  int64_t group;    // subspaces per table slice, 1..16
  int64_t n_parts;  // ranges of output blocks per tile
  float* scratch;   // this thread's: group * 256 * mt + part_blocks * 8 * mt floats
};

// Blocks of 8 output rows in each part, and the scratch floats a thread needs.
inline int64_t pq256_part_blocks(const Pq256BatchParams& p) {
  const int64_t blocks = (p.n + 7) / 8;
  return (blocks + p.n_parts - 1) / p.n_parts;
}
inline int64_t pq256_batch_scratch(const Pq256BatchParams& p) {
  return p.group * 256 * p.mt + pq256_part_blocks(p) * 8 * p.mt;
}

using PqBuildTablesFn = bool(const PqTableParams&, int64_t unit_begin, int64_t unit_end);
COMPRESSOPS_DECLARE_KERNEL(pq_build_tables, PqBuildTablesFn)
using Pq16QuantizeTablesFn = bool(const PqQuantizeParams&, int64_t m_begin, int64_t m_end);
COMPRESSOPS_DECLARE_KERNEL(pq16_quantize_tables, Pq16QuantizeTablesFn)
using Pq16ScanFn = bool(const Pq16ScanParams&, int64_t nb_begin, int64_t nb_end);
COMPRESSOPS_DECLARE_KERNEL(pq16_scan, Pq16ScanFn)
using Pq256BatchFn = bool(const Pq256BatchParams&, int64_t unit_begin, int64_t unit_end);
COMPRESSOPS_DECLARE_KERNEL(pq256_batch, Pq256BatchFn)

}  // namespace compressops::cpu::kernels
