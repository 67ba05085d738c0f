// Torch-free int4 (W4A8) linear kernels: their params and every level's symbol. The kernels are
// the level files beside this header.
#pragma once
#include "../../dispatch.h"
#include <cstdint>

namespace compressops::cpu::kernels {

enum class Int4FloatKind : int { kF32 = 0, kBF16 = 1 };

// Quantize rows of x to int8 per (row, group of group_size k): amax = max |x| over the group's
// real columns; scale = amax / 127; q = round_half_even(clamp(x * (127 / amax), -127, 127)).
// 127 / amax not finite (amax 0, or below about 3.7e-37) -> scale 0, q 0; a group holding NaN/Inf -> scale
// NaN, q 0 (its row's output is NaN).
// Writes q [m, k_pad] (zeros in k..k_pad), a_scale [m, groups] and a_corr [m, groups] =
// scale * float(sum of the group's q) (the zero-point correction term).
struct Int4QuantizeParams {
  const void* x;
  Int4FloatKind x_kind;
  int64_t ldx;
  int64_t k, k_pad, group_size, groups;
  int8_t* q;         // row stride k_pad
  float* a_scale;    // row stride groups
  float* a_corr;     // row stride groups
};

// out[m, n] = bias[n] + sum_g ( float(sum_{k in g} q_w[n, k] * q_x[m, k]) * (s[n, g] * a_scale[m, g])
//                               - zs[n, g] * a_corr[m, g] )
// with the packed layout of csrc/common/int4_layout.h; fp32 accumulation in group order.
struct Int4GemmParams {
  const int8_t* a;       // [m, k_pad] row stride lda
  int64_t lda;
  const float* a_scale;  // [m, groups] row stride ldas
  const float* a_corr;
  int64_t ldas;
  const uint8_t* w;      // packed body (after the header)
  const float* bias;     // [n] or nullptr
  void* out;             // [m, n] row stride ldo
  Int4FloatKind out_kind;
  int64_t ldo;
  int64_t m, n, group_size, groups;
};

using Int4QuantizeRowsFn = bool(const Int4QuantizeParams&, int64_t row_begin, int64_t row_end);
COMPRESSOPS_DECLARE_KERNEL(int4_quantize_rows, Int4QuantizeRowsFn)
using Int4GemmFn = bool(const Int4GemmParams&, int64_t nb_begin, int64_t nb_end);
COMPRESSOPS_DECLARE_KERNEL(int4_gemm, Int4GemmFn)

}  // namespace compressops::cpu::kernels
