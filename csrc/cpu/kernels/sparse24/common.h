// 2:4 sparse linear kernels: what the level files share. Each level file includes this header,
// so its code is compiled again with that level's flags; the anonymous namespace keeps every
// level's copy to its own object (with external linkage the linker would keep one copy, and the
// scalar kernel could end up running code compiled for AVX2).
#pragma once
#include <cstring>

#include "kernel.h"
#include "../bf16.h"

namespace compressops::cpu::kernels {
namespace {

inline float value_at(const Sparse24Params& p, const void* row, int64_t j) {
  return p.values_bf16 ? bf16_to_f32(static_cast<const uint16_t*>(row)[j]) : static_cast<const float*>(row)[j];
}

inline const void* values_row(const Sparse24Params& p, int64_t n) {
  const int64_t half = p.kp / 2;
  return p.values_bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(p.values) + n * half)
                       : static_cast<const void*>(static_cast<const float*>(p.values) + n * half);
}

// Positions of group g's two kept values (absolute K index).
inline void group_positions(const uint8_t* meta_row, int64_t g, int64_t* k0, int64_t* k1) {
  const unsigned nib = (meta_row[g >> 1] >> ((g & 1) * 4)) & 0xFu;
  *k0 = 4 * g + (nib & 3u);
  *k1 = 4 * g + ((nib >> 2) & 3u);
}

// Scalar dot of one output row with one activation row over groups [g0, g1).
inline float dot_groups(const Sparse24Params& p, const void* vrow, const uint8_t* mrow, const float* x, int64_t g0,
                        int64_t g1) {
  float acc = 0.0f;
  for (int64_t g = g0; g < g1; ++g) {
    int64_t k0, k1;
    group_positions(mrow, g, &k0, &k1);
    acc += value_at(p, vrow, 2 * g) * x[k0];
    acc += value_at(p, vrow, 2 * g + 1) * x[k1];
  }
  return acc;
}

inline int32_t idot_groups(const Sparse24Int8Params& p, const int8_t* vrow, const uint8_t* mrow, const int8_t* q,
                           int64_t g0, int64_t g1) {
  int32_t acc = 0;
  for (int64_t g = g0; g < g1; ++g) {
    int64_t k0, k1;
    group_positions(mrow, g, &k0, &k1);
    acc += static_cast<int32_t>(vrow[2 * g]) * q[k0] + static_cast<int32_t>(vrow[2 * g + 1]) * q[k1];
  }
  return acc;
}

inline void store_i8(const Sparse24Int8Params& p, int64_t m, int64_t n, int32_t acc) {
  float v = static_cast<float>(acc) * (p.a_scale[m] * p.w_scale[n]);
  if (p.bias) v = v + p.bias[n];
  p.out[m * p.ldo + n] = v;
}

// The row kernels' walk (rows of x, no transposed block): out[m, n] = dot(vrow, mrow, m) + bias[n]
// for every output row n of the range and batch row m, with the dot product of the caller's level.
template <typename Dot>
inline void for_each_output(const Sparse24Params& p, int64_t n_begin, int64_t n_end, Dot&& dot) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const void* vrow = values_row(p, n);
    const uint8_t* mrow = p.meta + n * p.meta_stride;
    for (int64_t m = 0; m < p.m; ++m) {
      float v = dot(vrow, mrow, m);
      if (p.bias) v = v + p.bias[n];
      p.out[m * p.ldo + n] = v;
    }
  }
}

// The same walk for int8 values: out[m, n] = float(dot(vrow, mrow, m)) * scales + bias[n] (store_i8).
template <typename Dot>
inline void for_each_output(const Sparse24Int8Params& p, int64_t n_begin, int64_t n_end, Dot&& dot) {
  const int64_t half = p.kp / 2;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* vrow = p.values + n * half;
    const uint8_t* mrow = p.meta + n * p.meta_stride;
    for (int64_t m = 0; m < p.m; ++m) {
      store_i8(p, m, n, dot(vrow, mrow, m));
    }
  }
}

}  // namespace
}  // namespace compressops::cpu::kernels
