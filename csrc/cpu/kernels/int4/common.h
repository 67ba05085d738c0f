// int4 (W4A8) linear kernels: what the level files share. Each level file includes this header,
// so its code is compiled again with that level's flags; the anonymous namespace keeps every
// level's copy to its own object (with external linkage the linker would keep one copy, and the
// scalar kernel could end up running code compiled for AVX2).
//
// The integer dot products are exact at every level and every level runs the same fp32 epilogue
// in the same order (two fused multiply-adds per group, then the bias), so the levels agree bit for
// bit (tests/test_ops_int4.py test_every_level_gives_the_same_bits).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../../../common/int4_layout.h"
#include "kernel.h"
#include "../bf16.h"

namespace compressops::cpu::kernels {
namespace {

constexpr int64_t NR = kInt4NR;

inline float load_x(const void* x, Int4FloatKind kind, int64_t i) {
  return kind == Int4FloatKind::kF32 ? static_cast<const float*>(x)[i]
                                     : bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
}

inline void store_out(const Int4GemmParams& p, int64_t m, int64_t n, float v) {
  if (p.out_kind == Int4FloatKind::kF32) {
    static_cast<float*>(p.out)[m * p.ldo + n] = v;
  } else {
    static_cast<uint16_t*>(p.out)[m * p.ldo + n] = f32_to_bf16(v);
  }
}

// Scale rule of one group (see Int4QuantizeParams). Returns false when the group quantizes to zeros.
// 127 / amax is inf for amax 0 and also for a tiny amax (below about 3.7e-37): both quantize to
// zero with scale 0, where an inf reciprocal would turn the group's zeros into NaN (0 * inf).
inline bool group_scale(float amax, bool nonfinite, float* scale, float* inv) {
  if (nonfinite) {
    *scale = std::numeric_limits<float>::quiet_NaN();
    return false;
  }
  const float r = 127.0f / amax;
  if (!std::isfinite(r)) {
    *scale = 0.0f;
    return false;
  }
  *scale = amax / 127.0f;
  *inv = r;
  return true;
}

inline int8_t quantize_value(float v) {
  if (v != v) v = 0.0f;
  v = std::min(std::max(v, -127.0f), 127.0f);
  return static_cast<int8_t>(std::nearbyint(v));
}

// One row, scalar form (also used for the ragged last group at every level).
inline void quantize_group_scalar(const Int4QuantizeParams& p, const void* x, int8_t* q, int64_t k0, int64_t k1,
                                  float* scale_out, float* corr_out) {
  float amax = 0.0f;
  bool nonfinite = false;
  for (int64_t i = k0; i < k1; ++i) {
    const float a = std::fabs(load_x(x, p.x_kind, i));
    nonfinite |= !std::isfinite(a);
    amax = std::max(amax, a);
  }
  float scale = 0.0f, inv = 0.0f;
  const int64_t g_end = k0 + p.group_size;
  if (!group_scale(amax, nonfinite, &scale, &inv)) {
    std::memset(q + k0, 0, g_end - k0);
    *scale_out = scale;
    *corr_out = scale == scale ? 0.0f : scale;
    return;
  }
  int32_t sum = 0;
  for (int64_t i = k0; i < k1; ++i) {
    q[i] = quantize_value(load_x(x, p.x_kind, i) * inv);
    sum += q[i];
  }
  std::memset(q + k1, 0, g_end - k1);
  *scale_out = scale;
  *corr_out = scale * static_cast<float>(sum);
}

// The walk of int4_quantize_rows over rows and groups. A level with a vector form of a group
// passes it as WholeGroup(p, x, q, k0, scale_out, corr_out), which then takes every group of
// group_size real columns; the ragged last group, and every group at a level without one, take
// the scalar form. (A template argument, so the call is direct and inlinable.)
template <auto WholeGroup = nullptr>
inline void quantize_rows(const Int4QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const void* x = p.x_kind == Int4FloatKind::kF32
                        ? static_cast<const void*>(static_cast<const float*>(p.x) + r * p.ldx)
                        : static_cast<const void*>(static_cast<const uint16_t*>(p.x) + r * p.ldx);
    int8_t* q = p.q + r * p.k_pad;
    for (int64_t g = 0; g < p.groups; ++g) {
      const int64_t k0 = g * p.group_size, k1 = std::min(p.k, k0 + p.group_size);
      float* sc = p.a_scale + r * p.groups + g;
      float* co = p.a_corr + r * p.groups + g;
      if constexpr (!std::is_null_pointer_v<decltype(WholeGroup)>) {
        if (k1 - k0 == p.group_size) {
          WholeGroup(p, x, q, k0, sc, co);
          continue;
        }
      }
      quantize_group_scalar(p, x, q, k0, k1, sc, co);
    }
  }
}

}  // namespace
}  // namespace compressops::cpu::kernels
