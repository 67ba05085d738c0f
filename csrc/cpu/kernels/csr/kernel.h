// Torch-free CSR sparse linear kernels (row-parallel SpMM): their params and every level's symbol.
// The kernels are the level files beside this header; compressops/formats/csr.py has the packed
// index layout.
#pragma once
#include "../../dispatch.h"
#include <cstdint>

namespace compressops::cpu::kernels {

// out[m, n] = sum_{j in row n} values[j] * x[m, col[j]] + bias[n], fp32 accumulation.
// Small batches read rows of x ([m, k], stride ldx); larger ones (csr/policy.h says which) read xt
// ([k, ldt], the activation block transposed, ldt a multiple of 8, zero padded lanes).
struct CsrParams {
  const int64_t* rowptr;  // [n+1]
  const void* cols;       // uint16 or int32 [nnz]
  int col_bytes;          // 2 or 4
  const void* values;     // [nnz]
  int values_bf16;
  const float* x;
  int64_t ldx;
  const float* xt;
  int64_t ldt;
  const float* bias;
  float* out;
  int64_t ldo;
  int64_t m, n, k;
  // Check the columns of the rows a call gets before reading x (the pack's column bytes are not
  // trusted): the call then returns false, computing nothing, when one lies outside [0, k).
  int check_columns;
};

// The host hands the kernels at most this many batch rows at a time (the transposed kernels
// stage a row block's results in a [rows][kCsrMaxLanes] tile).
constexpr int64_t kCsrMaxLanes = 64;
// With at least 40% nonzeros, 64-row chunks run the K-tiled kernel: enough work per (row, K tile)
// to pay for the tiles' per-row cursors (same-process A/B, sorted columns, K=4096, 2 threads,
// 2026-11-23: 1.6x faster than untiled at 50% sparsity and M=64). Sparser matrices never gain from
// the tiles at 64 rows (untiled 1.2-1.6x faster at 80-90%). The tiled kernel is correct for any
// column order (a row's cursor takes every nonzero by the last tile); sorted columns, which
// compressops.formats.csr.compress produces, are what make it fast.
constexpr int64_t kCsrTileMinMDense = 64;

// Output rows [n_begin, n_end) (the host splits them by nonzero count). Returns false only when
// check_columns found a column outside [0, k) in those rows (an empty range never does, so the
// kernel table's probe always accepts).
using CsrSpmmFn = bool(const CsrParams&, int64_t n_begin, int64_t n_end);
COMPRESSOPS_DECLARE_KERNEL(csr_spmm, CsrSpmmFn)

}  // namespace compressops::cpu::kernels
