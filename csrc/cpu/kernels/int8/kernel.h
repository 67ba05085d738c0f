// Torch-free int8 linear kernels: the params and the declarations of every per-ISA copy. The
// definitions are this directory's level files (<level>.cpp, for the levels that have kernels),
// with what several levels share in common.h.
#pragma once
#include "../../dispatch.h"
#include <cstdint>

namespace compressops::cpu::kernels {

enum class FloatKind : int { kF32 = 0, kBF16 = 1 };

// Quantize rows of x to symmetric int8 in [-127, 127] (round half to even, NaN -> 0).
// Dynamic (static_inv == nullptr): per-row scale = amax / 127; a row whose 127 / amax is not finite
// (amax 0, or below about 3.7e-37) gets scale 0 and q = 0; a row with a non-finite amax gets scale
// NaN and q = 0, so its output is NaN.
// Static: q = clamp(round(x * static_inv[0])), scale = static_scale[0].
// q rows are k_pad long; the k..k_pad tail is written as zeros.
struct Int8QuantizeParams {
  const void* x;
  FloatKind x_kind;
  int64_t ldx;
  int64_t k;
  int64_t k_pad;
  int8_t* q;
  int64_t ldq;
  float* scale;               // [m] out
  const float* static_scale;  // nullptr for dynamic
  const float* static_inv;    // 1 / static_scale, computed once by the host
};

// out[m, n] = float(sum_k q[m, k] * w[n, k]) * (a_scale[m] * w_scale[n]) + bias[n]
struct Int8GemmParams {
  const int8_t* a;  // [m, k_pad] quantized activations, row stride lda
  int64_t lda;
  const float* a_scale;     // [m]
  const int8_t* w;          // packed blocks, see csrc/common/int8_layout.h
  const int32_t* col_sums;  // [n_pad]
  const float* w_scale;     // [n]
  const float* bias;        // [n] or nullptr
  void* out;                // [m, n] row stride ldo
  FloatKind out_kind;
  int64_t ldo;
  int64_t m, n, k_pad;
};

// out[m, n] = (sum_k x[m, k] * w[n, k]) * w_scale[n] + bias[n], x in fp32, fp32 accumulation.
struct Int8WeightOnlyParams {
  const float* x;  // [m, k], row stride ldx; host converts other dtypes first
  int64_t ldx;
  int64_t k;
  const int8_t* w;
  const float* w_scale;
  const float* bias;
  void* out;
  FloatKind out_kind;
  int64_t ldo;
  int64_t m, n, k_pad;
};

// Each kernel handles rows [row_begin, row_end) or column blocks [nb_begin, nb_end) (blocks of
// kInt8NR output channels) and returns true when it handled them, false to decline (the host then
// retries one level lower).
using Int8QuantizeRowsFn = bool(const Int8QuantizeParams&, int64_t row_begin, int64_t row_end);
COMPRESSOPS_DECLARE_KERNEL(int8_quantize_rows, Int8QuantizeRowsFn)
using Int8GemmFn = bool(const Int8GemmParams&, int64_t nb_begin, int64_t nb_end);
COMPRESSOPS_DECLARE_KERNEL(int8_gemm, Int8GemmFn)
using Int8WeightOnlyGemmFn = bool(const Int8WeightOnlyParams&, int64_t nb_begin, int64_t nb_end);
COMPRESSOPS_DECLARE_KERNEL(int8_weight_only_gemm, Int8WeightOnlyGemmFn)

}  // namespace compressops::cpu::kernels
