// What the int8 level files share: the scalar rules every level ends in (rounding, bf16, the
// dynamic scale, the float epilogue, the column-block loop) and the AVX2 code that the levels above
// AVX2 reuse (quantization, the epilogue, the weight-only GEMM). Each level file includes it once.
//
// A kernel a level does not define (no file for the level, or no entry point in it) falls down the
// host's chain to the next level that has it.
//
// Every integer result is exact, and the float epilogue is written as separate multiply and add
// (kernel files build with -ffp-contract=off), so each level returns the same bits as
// compressops/reference.py.
//
// Everything here has internal linkage: each level file's copy is compiled with that level's
// flags, and one shared inline definition would let the linker keep a copy built for a level
// above its caller's.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../../../common/int8_layout.h"
#include "../kernel_macros.h"
#include "../bf16.h"
#include "kernel.h"

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
#include "../simd.h"
#endif

namespace compressops::cpu::kernels {
namespace {

constexpr int64_t NR = kInt8NR;
constexpr int64_t KR = kInt8KR;
// Column blocks that share one pass over a chunk of activation rows: the rows stay in L1 while
// the weights of these blocks (NBG * 16 * K bytes) stay in L2.
constexpr int64_t kBlocksPerGroup = 4;

inline float load_x(const void* x, FloatKind kind, int64_t i) {
  return kind == FloatKind::kF32 ? static_cast<const float*>(x)[i]
                                 : bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
}

// q = round_half_even(clamp(v, -127, 127)), NaN -> 0. Clamping first keeps the conversion in
// range; it equals clamp-after-round because the bounds are integers.
inline int8_t quantize_value(float v) {
  if (v != v) v = 0.0f;
  v = std::min(std::max(v, -127.0f), 127.0f);
  return static_cast<int8_t>(std::nearbyint(v));
}

template <typename P>
inline void store_out(const P& p, int64_t m, int64_t n, float v) {
  if (p.out_kind == FloatKind::kF32) {
    static_cast<float*>(p.out)[m * p.ldo + n] = v;
  } else {
    static_cast<uint16_t*>(p.out)[m * p.ldo + n] = f32_to_bf16(v);
  }
}

// The dynamic per-row scale rule (see Int8QuantizeParams). Returns false when the row quantizes
// to all zeros (127 / amax not finite, i.e. amax 0 or below about 3.7e-37: scale 0; NaN/Inf
// present: scale NaN, so the row's output is NaN). An inf reciprocal would map every nonzero to
// +-127 whatever its size.
inline bool dynamic_scale(float amax, bool nonfinite, float* scale, float* inv) {
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

// Epilogue for one row and one block of 16 columns, scalar form (also the tail of every level).
inline void epilogue_scalar(const Int8GemmParams& p, int64_t m, int64_t n0, const int32_t* acc) {
  const int64_t cols = std::min<int64_t>(NR, p.n - n0);
  const float sa = p.a_scale[m];
  for (int64_t c = 0; c < cols; ++c) {
    float v = static_cast<float>(acc[c]) * (sa * p.w_scale[n0 + c]);
    if (p.bias) v = v + p.bias[n0 + c];
    store_out(p, m, n0 + c, v);
  }
}

// Column blocks [nb_begin, nb_end) in groups of kBlocksPerGroup, rows MR at a time: the loop
// every level's int8_gemm runs. Rows(p, m0, rows, nb) computes rows [m0, m0 + rows) of block nb.
template <int MR, void (*Rows)(const Int8GemmParams&, int64_t m0, int rows, int64_t nb)>
inline void gemm_block_groups(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  for (int64_t g0 = nb_begin; g0 < nb_end; g0 += kBlocksPerGroup) {
    const int64_t g1 = std::min(nb_end, g0 + kBlocksPerGroup);
    for (int64_t m0 = 0; m0 < p.m; m0 += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, p.m - m0));
      for (int64_t nb = g0; nb < g1; ++nb) Rows(p, m0, rows, nb);
    }
  }
}

// The weight-only epilogue for row m of block n0: out = sums * w_scale + bias.
inline void weight_only_store(const Int8WeightOnlyParams& p, int64_t m, int64_t n0, const float* sums) {
  const int64_t cols = std::min<int64_t>(NR, p.n - n0);
  for (int64_t c = 0; c < cols; ++c) {
    float v = sums[c] * p.w_scale[n0 + c];
    if (p.bias) v = v + p.bias[n0 + c];
    store_out(p, m, n0 + c, v);
  }
}

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2

inline __m256 load8_x(const void* x, FloatKind kind, int64_t i) {
  if (kind == FloatKind::kF32) return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  return bf16x8_to_f32(static_cast<const uint16_t*>(x) + i);
}


inline void store8(void* out, FloatKind kind, int64_t idx, __m256 v) {
  if (kind == FloatKind::kF32) {
    _mm256_storeu_ps(static_cast<float*>(out) + idx, v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + idx), f32x8_to_bf16(v));
  }
}

inline void epilogue_avx2(const Int8GemmParams& p, int64_t m, int64_t n0, __m256i acc_lo, __m256i acc_hi) {
  if (n0 + NR > p.n) {
    alignas(32) int32_t tmp[NR];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), acc_lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), acc_hi);
    epilogue_scalar(p, m, n0, tmp);
    return;
  }
  const __m256 sa = _mm256_set1_ps(p.a_scale[m]);
  const __m256i accs[2] = {acc_lo, acc_hi};
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n0 + 8 * h;
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(accs[h]), _mm256_mul_ps(sa, _mm256_loadu_ps(p.w_scale + n)));
    if (p.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(p.bias + n));
    store8(p.out, p.out_kind, m * p.ldo + n, v);
  }
}

// Quantize one row; the arithmetic is the scalar path's, 8 lanes at a time.
inline void quantize_row_avx2(const Int8QuantizeParams& p, int64_t r) {
  const void* x = p.x_kind == FloatKind::kF32
                      ? static_cast<const void*>(static_cast<const float*>(p.x) + r * p.ldx)
                      : static_cast<const void*>(static_cast<const uint16_t*>(p.x) + r * p.ldx);
  int8_t* q = p.q + r * p.ldq;
  const int64_t k = p.k;
  float scale = 0.0f, inv = 0.0f;
  bool zero_row = false;
  if (p.static_scale) {
    scale = p.static_scale[0];
    inv = p.static_inv[0];
  } else {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(std::numeric_limits<float>::max());
    __m256 vmax = _mm256_setzero_ps();
    __m256 bad = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
      const __m256 a = _mm256_and_ps(load8_x(x, p.x_kind, i), abs_mask);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));  // inf or NaN
      vmax = _mm256_max_ps(vmax, a);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float amax = 0.0f;
    for (float l : lanes) amax = std::max(amax, l);
    bool nonfinite = _mm256_movemask_ps(bad) != 0;
    for (; i < k; ++i) {
      const float a = std::fabs(load_x(x, p.x_kind, i));
      nonfinite |= !std::isfinite(a);
      amax = std::max(amax, a);
    }
    zero_row = !dynamic_scale(amax, nonfinite, &scale, &inv);
  }
  p.scale[r] = scale;
  if (zero_row) {
    std::memset(q, 0, p.k_pad);
    return;
  }
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  auto quant8 = [&](int64_t i) {
    __m256 v = _mm256_mul_ps(load8_x(x, p.x_kind, i), vinv);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> 0
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    return _mm256_cvtps_epi32(v);  // MXCSR default: round to nearest even
  };
  int64_t i = 0;
  const __m256i fix_lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; i + 32 <= k; i += 32) {
    const __m256i ab = _mm256_packs_epi32(quant8(i), quant8(i + 8));
    const __m256i cd = _mm256_packs_epi32(quant8(i + 16), quant8(i + 24));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), fix_lanes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
  }
  for (; i < k; ++i) q[i] = quantize_value(load_x(x, p.x_kind, i) * inv);
  for (; i < p.k_pad; ++i) q[i] = 0;
}

// One row times one 16-column block, fp32 accumulation. Lanes hold (column, k mod 4) pairs:
// 8 accumulators x 8 lanes = 16 columns x 4. kFromInt8 converts the int8 weights in registers
// (one row: no reuse to pay for a scratch pass); otherwise they come from a dequantized scratch.
template <bool kFromInt8>
inline void weight_only_row_avx2(const float* x, const int8_t* wblk, const float* wf, int64_t kg, float* sums) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t g = 0; g < kg; ++g) {
    const __m256 x4 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x + g * KR));
    for (int i = 0; i < 8; ++i) {
      const int64_t off = g * NR * KR + 8 * i;
      const __m256 w = kFromInt8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                       _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wblk + off))))
                                 : _mm256_loadu_ps(wf + off);
      acc[i] = _mm256_fmadd_ps(w, x4, acc[i]);
    }
  }
  alignas(32) float lanes[64];
  for (int i = 0; i < 8; ++i) _mm256_store_ps(lanes + 8 * i, acc[i]);
  for (int64_t c = 0; c < NR; ++c) sums[c] = (lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3]);
}

// x rows hold k_pad values, zero beyond k (the host pads), and padded weights are zero, so whole
// k-groups suffice.
inline void weight_only_gemm_avx2(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  const int64_t kg = p.k_pad / KR;
  const bool single_row = p.m == 1;
  // Per block, the weights dequantized once to fp32 in the packed order, reused by every row.
  std::vector<float> wf(single_row ? 0 : static_cast<size_t>(p.k_pad * NR));
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const int8_t* wblk = p.w + nb * NR * p.k_pad;
    if (!single_row) {
      for (int64_t i = 0; i < p.k_pad * NR; ++i) wf[i] = static_cast<float>(wblk[i]);
    }
    for (int64_t m = 0; m < p.m; ++m) {
      float sums[NR];
      if (single_row) {
        weight_only_row_avx2<true>(p.x + m * p.ldx, wblk, nullptr, kg, sums);
      } else {
        weight_only_row_avx2<false>(p.x + m * p.ldx, wblk, wf.data(), kg, sums);
      }
      weight_only_store(p, m, nb * NR, sums);
    }
  }
}

#endif  // AVX2 and up

}  // namespace
}  // namespace compressops::cpu::kernels
