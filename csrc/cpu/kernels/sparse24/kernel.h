// Torch-free 2:4 sparse linear kernels: their params and every level's symbol. The kernels are
// the level files beside this header.
// Format: compressops/formats/sparse24.py (kept values [N, Kp/2] in K order, 2-bit positions packed
// 4 bits a group, 2 groups a byte, low nibble first).
#pragma once
#include "../../dispatch.h"
#include <cstdint>

namespace compressops::cpu::kernels {

// out[m, n] = sum_kept value * x[m, pos] + bias[n], fp32 accumulation, fp32 output.
// Small batches (sparse24/policy.h says which) read rows of x ([m, kp], zero padded, stride
// ldx); larger batches read xt, the activation block transposed to [kp, ldt] (ldt a multiple of 8,
// zero padded lanes), so each kept weight does an FMA across the batch.
struct Sparse24Params {
  const float* x;   // [m, kp] or nullptr
  int64_t ldx;
  const float* xs;  // avx2, small batches: x[:, :kp16] with groups of each 16 stored 0, 2, 1, 3
  int64_t ldxs;
  const float* xt;  // [kp, ldt] or nullptr
  int64_t ldt;
  const void* values;  // [n, kp/2], row stride kp/2
  int values_bf16;     // 0: float32, 1: bfloat16
  const uint8_t* meta;  // [n, meta_stride]
  int64_t meta_stride;
  const float* bias;  // [n] or nullptr
  float* out;         // [m, ldo]
  int64_t ldo;
  int64_t m, n, kp;
};

// int8 kept values: out[m, n] = float(sum q[m, pos] * v) * (a_scale[m] * w_scale[n]) + bias[n].
struct Sparse24Int8Params {
  const int8_t* q;  // [m, kp] quantized activations, zero padded, stride ldq
  int64_t ldq;
  const float* a_scale;  // [m]
  const int8_t* values;  // [n, kp/2]
  const uint8_t* meta;
  int64_t meta_stride;
  const float* w_scale;
  const float* bias;
  float* out;
  int64_t ldo;
  int64_t m, n, kp;
  const int16_t* qt16;  // larger batches: q transposed to [kp, ldt16] int16, or nullptr
  int64_t ldt16;
};

// Output channels [n_begin, n_end); return false to decline (never, at the levels implemented).
using Sparse24FFn = bool(const Sparse24Params&, int64_t n_begin, int64_t n_end);
COMPRESSOPS_DECLARE_KERNEL(sparse24_f, Sparse24FFn)
using Sparse24I8Fn = bool(const Sparse24Int8Params&, int64_t n_begin, int64_t n_end);
COMPRESSOPS_DECLARE_KERNEL(sparse24_i8, Sparse24I8Fn)

}  // namespace compressops::cpu::kernels
