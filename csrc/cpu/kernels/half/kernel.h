// Torch-free half_linear kernels: out = x @ w.T + bias, w float16 [n, k] row-major (the pack's body,
// compressops/formats/half.py), x and out float32, float32 accumulation. One file per level that
// has a kernel (scalar.cpp, avx2.cpp); common.h holds what they share.
#pragma once
#include <cstdint>

#include "../../dispatch.h"

namespace compressops::cpu::kernels {

struct HalfLinearParams {
  const float* x;     // [m, k], row stride ldx, unit column stride
  int64_t ldx;
  const uint16_t* w;  // float16 bits [n, k], row-major
  const float* bias;  // [n] or nullptr
  float* out;         // [m, n], row stride ldo
  int64_t ldo;
  int64_t m, n, k;
};

// Computes output columns [n_begin, n_end) of every row; returns true (no level declines a shape).
// Each output is summed in an order that depends on K and the level only, never on m, the row's
// neighbours or the column range, so a row's result does not depend on its batch or the threads.
using HalfLinearFn = bool(const HalfLinearParams&, int64_t n_begin, int64_t n_end);
COMPRESSOPS_DECLARE_KERNEL(half_linear, HalfLinearFn)

}  // namespace compressops::cpu::kernels
