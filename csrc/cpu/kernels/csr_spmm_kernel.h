// Torch-free CSR sparse linear kernels (row-parallel SpMM). See csr_spmm_kernel.cpp and
// compressops/formats/csr.py for the packed index layout.
#pragma once
#include <cstdint>

namespace compressops::cpu::kernels {

// out[m, n] = sum_{j in row n} values[j] * x[m, col[j]] + bias[n], fp32 accumulation.
// Small batches read rows of x ([m, k], stride ldx); m >= kCsrTransposeM read xt ([k, ldt], the
// activation block transposed, ldt a multiple of 8, zero padded lanes).
struct CsrParams {
  const int64_t* rowptr;  // [n+1]
  const void* cols;       // uint16 or int32 [nnz]
  int col_bytes;          // 2 or 4
  int sorted;             // 1: columns non-decreasing within every row (enables K tiling)
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
};

constexpr int64_t kCsrTransposeM = 8;
// From this batch size on (and with sorted columns) the K-tiled kernel runs. Below it the per-row
// cursor bookkeeping of the tiles costs more than it saves: same-process A/B at K=4096, 90%
// sparsity, 2 threads (2026-11-23): untiled 1.5-4x faster at M=8..64, 1.3x at M=256; tiled 1.2x
// faster at M=512. At 50% sparsity the tiles pay earlier (1.1x at M=64, 1.6x at M=256); at 70-80%
// the untiled kernel still won or tied at M=256.
constexpr int64_t kCsrTileMinM = 384;
constexpr int64_t kCsrTileMinMDense = 64;  // for matrices with >= 40% nonzeros

// Output rows [n_begin, n_end) (the host splits them by nonzero count).
#define COMPRESSOPS_DECLARE_CSR(SUFFIX) bool csr_spmm_##SUFFIX(const CsrParams&, int64_t n_begin, int64_t n_end);
COMPRESSOPS_DECLARE_CSR(SCALAR)
COMPRESSOPS_DECLARE_CSR(AVX2)
#undef COMPRESSOPS_DECLARE_CSR

}  // namespace compressops::cpu::kernels
