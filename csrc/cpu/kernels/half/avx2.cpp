// half_linear at the AVX2 level (F16C + FMA): register tiles of MR input rows x NR weight rows,
// dot products along k, 8 k per step (vcvtph2ps widens 8 float16 weights, vfmadd231ps adds them in).
//
// Every output is summed the same way whatever tile computes it: 8 lane sums over k in steps of 8,
// a fixed horizontal reduction, then the k tail (K mod 8) in order, then the bias. So a result
// depends on K alone, not on the tile, the batch or the thread split (kernel.h).
//
// Tiles: 4 x 3 (12 accumulators; each weight vector converted once per 4 rows, each row vector
// loaded once per 3 weight rows) for batches; 1 x 8 for a single row, where the weight stream is the
// whole cost and 8 independent accumulators hide the FMA latency. Input rows are taken in chunks
// of about 256 KiB so they stay in L2 while the weight rows of a tile stay in L1.
#include <algorithm>

#include "../kernel_macros.h"
#include "../simd.h"
#include "common.h"
#include "kernel.h"

namespace compressops::cpu::kernels {
namespace {

constexpr int64_t kRowChunkBytes = 256 * 1024;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Outputs [m0, m0 + MR) x [n0, n0 + NR).
template <int MR, int NR>
inline void tile(const HalfLinearParams& p, int64_t m0, int64_t n0) {
  const int64_t k = p.k, k8 = k & ~int64_t{7};
  const float* x = p.x + m0 * p.ldx;
  const uint16_t* w = p.w + n0 * k;
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < k8; kk += 8) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * k + kk)));
    }
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * p.ldx + kk);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = hsum(acc[i][j]);
      for (int64_t kk = k8; kk < k; ++kk) s += x[i * p.ldx + kk] * half_detail::half_to_float(w[j * k + kk]);
      p.out[(m0 + i) * p.ldo + n0 + j] = p.bias ? s + p.bias[n0 + j] : s;
    }
  }
}

// Rows [m_begin, m_end) of NR weight rows from n0: 4-row tiles, then the 1-3 rows left.
template <int NR>
void rows_of(const HalfLinearParams& p, int64_t m_begin, int64_t m_end, int64_t n0) {
  int64_t m0 = m_begin;
  for (; m0 + 4 <= m_end; m0 += 4) tile<4, NR>(p, m0, n0);
  switch (m_end - m0) {
    case 3: tile<3, NR>(p, m0, n0); break;
    case 2: tile<2, NR>(p, m0, n0); break;
    case 1: tile<1, NR>(p, m0, n0); break;
    default: break;
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(half_linear)(const HalfLinearParams& p, int64_t n_begin, int64_t n_end) {
  const int64_t chunk = std::max<int64_t>(4, kRowChunkBytes / (4 * p.k) / 4 * 4);
  for (int64_t mc = 0; mc < p.m; mc += chunk) {
    const int64_t m_end = std::min(p.m, mc + chunk);
    int64_t n0 = n_begin;
    if (m_end - mc == 1) {
      for (; n0 + 8 <= n_end; n0 += 8) tile<1, 8>(p, mc, n0);
    } else {
      for (; n0 + 3 <= n_end; n0 += 3) rows_of<3>(p, mc, m_end, n0);
    }
    for (; n0 < n_end; ++n0) rows_of<1>(p, mc, m_end, n0);
  }
  return true;
}

}  // namespace compressops::cpu::kernels
