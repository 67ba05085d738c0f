// CSR sparse linear kernels at the AVX2 level. The family has no avx512, avx512_vnni or amx file, so
// those levels fall down the chain to these kernels.
//
// Small batches: each output row is a dot product over its nonzeros, vectorized 8 nonzeros at a
// time (8 scalar loads assembled in a register: faster than vgatherdps on Zen 3; 16-bit columns
// are read 4 at a time and split in general registers).
// Larger batches: the host transposes the activations to [k, ldt]; each nonzero is broadcast and
// FMA'd across 32 batch lanes at a time (an L2-sized slice of the transposed block), so a row's
// nonzeros are read once per 32 lanes and stay in L1/L2. For denser matrices the K-tiled variant
// keeps a 128-position tile of the activations in L1 instead.
#include <algorithm>
#include <cstdint>

#include "../kernel_macros.h"
#include "../lane_tile_store.h"
#include "../simd.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// x at 8 columns: scalar loads assembled in registers (faster than vgatherdps on Zen 3).
inline __m256 gather8(const float* x, const int32_t* c) {
  const __m128 lo = _mm_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]]);
  const __m128 hi = _mm_setr_ps(x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// 16-bit columns: two 8-byte loads for 8 columns, split with shifts in general registers, so the
// load ports see 11 loads per 8 nonzeros instead of 17. Alternating runs at 90% sparsity, M=1,
// K=4096, N in {1024, 4096}, 1 and 2 threads (2026-11-23): 1.1-1.2x faster alone, 1.3-1.45x with
// the value type made a template parameter below. The empty asm stops the compiler from turning
// the shifts back into 8 narrow loads.
inline __m256 gather8(const float* x, const uint16_t* c) {
  uint64_t a, b;
  std::memcpy(&a, c, 8);
  std::memcpy(&b, c + 4, 8);
#if defined(__GNUC__)
  asm("" : "+r"(a), "+r"(b));
#endif
  const __m128 lo = _mm_setr_ps(x[a & 0xFFFF], x[(a >> 16) & 0xFFFF], x[(a >> 32) & 0xFFFF], x[a >> 48]);
  const __m128 hi = _mm_setr_ps(x[b & 0xFFFF], x[(b >> 16) & 0xFFFF], x[(b >> 32) & 0xFFFF], x[b >> 48]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

template <bool kBf16>
inline __m256 load8(const void* values, int64_t j) {
  if constexpr (!kBf16) return _mm256_loadu_ps(static_cast<const float*>(values) + j);
  return bf16x8_to_f32(static_cast<const uint16_t*>(values) + j);
}

// Whether the 8 columns at c all lie below lim + 1 (lim = k - 1): unsigned saturating subtraction
// leaves a nonzero lane exactly where a column exceeds lim.
inline bool cols8_ok(const uint16_t* c, __m128i lim, __m256i) {
  const __m128i over = _mm_subs_epu16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)), lim);
  return _mm_testz_si128(over, over);
}
// 16 16-bit columns: one 32-byte load, so the main loop pays one check per 16 nonzeros.
inline bool cols16_ok(const uint16_t* c, __m128i lim, __m256i) {
  const __m256i over = _mm256_subs_epu16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)),
                                         _mm256_broadcastsi128_si256(lim));
  return _mm256_testz_si256(over, over);
}
inline bool cols8_ok(const int32_t* c, __m128i, __m256i lim) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
  const __m256i over = _mm256_sub_epi32(_mm256_max_epu32(v, lim), lim);  // negative columns read as > lim
  return _mm256_testz_si256(over, over);
}
inline bool cols16_ok(const int32_t* c, __m128i lim16, __m256i lim) {
  return cols8_ok(c, lim16, lim) && cols8_ok(c + 8, lim16, lim);
}

// The value type and the column check are template parameters so the loop carries no
// per-iteration branch on them. kCheck: each block of 8 columns is checked before x is read at
// them (one or two loads and a few ALU ops per 16 nonzeros, next to the 20 loads of the gathers); a column
// outside [0, k) sets *bad and ends the row.
template <typename C, bool kBf16, bool kCheck>
inline float dot_cols(const CsrParams& p, const float* x, const C* cols, int64_t j0, int64_t j1, bool* bad) {
  const void* values = p.values;
  const __m128i lim16 = _mm_set1_epi16(static_cast<int16_t>(static_cast<uint16_t>(std::min<int64_t>(p.k, 65536) - 1)));
  const __m256i lim32 = _mm256_set1_epi32(static_cast<int32_t>(std::min<int64_t>(p.k, INT32_MAX) - 1));
  auto ok = [&](int64_t j, auto check) {
    if constexpr (kCheck) {
      if (!check(cols + j, lim16, lim32)) {
        *bad = true;
        return false;
      }
    }
    return true;
  };
  auto ok16 = [](const C* c, __m128i l16, __m256i l32) { return cols16_ok(c, l16, l32); };
  auto ok8 = [](const C* c, __m128i l16, __m256i l32) { return cols8_ok(c, l16, l32); };
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = j0;
  for (; j + 16 <= j1; j += 16) {
    if (!ok(j, ok16)) return 0.0f;
    a0 = _mm256_fmadd_ps(gather8(x, cols + j), load8<kBf16>(values, j), a0);
    a1 = _mm256_fmadd_ps(gather8(x, cols + j + 8), load8<kBf16>(values, j + 8), a1);
  }
  if (j + 8 <= j1) {
    if (!ok(j, ok8)) return 0.0f;
    a0 = _mm256_fmadd_ps(gather8(x, cols + j), load8<kBf16>(values, j), a0);
    j += 8;
  }
  return hsum(_mm256_add_ps(a0, a1)) + dot_scalar(p, x, j, j1, kCheck, bad);
}

template <typename C, bool kCheck>
inline float dot_typed(const CsrParams& p, const float* x, int64_t j0, int64_t j1, bool* bad) {
  const auto* c = static_cast<const C*>(p.cols);
  return p.values_bf16 ? dot_cols<C, true, kCheck>(p, x, c, j0, j1, bad)
                       : dot_cols<C, false, kCheck>(p, x, c, j0, j1, bad);
}

inline float dot_avx2(const CsrParams& p, const float* x, int64_t j0, int64_t j1, bool check, bool* bad) {
  // 16-bit columns cannot pass k = 65536: nothing to check there.
  check = check && !(p.col_bytes == 2 && p.k >= 65536);
  if (p.col_bytes == 2) {
    return check ? dot_typed<uint16_t, true>(p, x, j0, j1, bad) : dot_typed<uint16_t, false>(p, x, j0, j1, bad);
  }
  return check ? dot_typed<int32_t, true>(p, x, j0, j1, bad) : dot_typed<int32_t, false>(p, x, j0, j1, bad);
}

// S accumulator sets, nonzero j going to set j % S, so S nonzeros' FMAs are in flight at once.
// Same-process A/B at K=4096, 90% sparsity, 2 threads (2026-11-23): at 8 lanes (V = 1) two sets
// were 1.6x faster than one, and four sets slower than one; from 24 lanes (V >= 3) one set was
// fastest by 25-60% (more sets spill); at 16 lanes one and two sets tied.
template <int V, int S>
inline void row_lanes(const CsrParams& p, int64_t j0, int64_t j1, int64_t mc, float* acc) {
  __m256 a[S][V];
  for (int s = 0; s < S; ++s) {
    for (int v = 0; v < V; ++v) a[s][v] = _mm256_setzero_ps();
  }
  const float* xt = p.xt + mc;
  int64_t j = j0;
  for (; j + S <= j1; j += S) {
    for (int s = 0; s < S; ++s) {
      const __m256 w = _mm256_set1_ps(val(p, j + s));
      const float* xr = xt + col(p, j + s) * p.ldt;
      for (int v = 0; v < V; ++v) a[s][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), a[s][v]);
    }
  }
  // The last < S nonzeros go to set 0 (a runtime set index would push the sets out of registers).
  for (; j < j1; ++j) {
    const __m256 w = _mm256_set1_ps(val(p, j));
    const float* xr = xt + col(p, j) * p.ldt;
    for (int v = 0; v < V; ++v) a[0][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), a[0][v]);
  }
  for (int v = 0; v < V; ++v) {
    __m256 t = a[0][v];
    for (int s = 1; s < S; ++s) t = _mm256_add_ps(t, a[s][v]);
    _mm256_storeu_ps(acc + 8 * v, t);
  }
}

void transposed_avx2(const CsrParams& p, int64_t n_begin, int64_t n_end) {
  // 32 lanes per pass: measured faster than 16, 24, 48 and 64 at K=4096, M=24..256 (2 threads,
  // same-process A/B, 2026-11-23): fewer passes over the nonzeros, and a pass's slice of the
  // transposed activations (K x 32 floats, 512 KiB at K=4096) still mostly hits L2.
  constexpr int64_t kLanes = 32;
  constexpr int64_t kRows = 64;  // rows per slice pass: their nonzeros stay in L1/L2
  // A row block's results are staged [row][lane] and written a batch row at a time (contiguous
  // stores), not one store per lane per row at a stride of N floats. Same-process A/B, M=64,
  // 2 threads (2026-11-23): 1.44x faster at 1536x384 90%, 1.0-1.06x at 4096x4096 and 11008x4096.
  alignas(32) float tile[kRows][kCsrMaxLanes];
  static_assert(kCsrMaxLanes % kLanes == 0, "a chunk holds whole passes");
  static_assert(kCsrMaxLanes == 64, "store_lane_tile takes [rows][64] tiles");
  for (int64_t r0 = n_begin; r0 < n_end; r0 += kRows) {
    const int64_t r1 = std::min(n_end, r0 + kRows);
    for (int64_t mc = 0; mc < p.m; mc += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, p.m - mc);
      for (int64_t n = r0; n < r1; ++n) {
        const int64_t j0 = p.rowptr[n], j1 = p.rowptr[n + 1];
        float* acc = tile[n - r0] + mc;
        switch ((lanes + 7) / 8) {
          case 1: row_lanes<1, 2>(p, j0, j1, mc, acc); break;
          case 2: row_lanes<2, 1>(p, j0, j1, mc, acc); break;
          case 3: row_lanes<3, 1>(p, j0, j1, mc, acc); break;
          default: row_lanes<4, 1>(p, j0, j1, mc, acc); break;
        }
      }
    }
    store_lane_tile(tile, r1 - r0, p.m, 0, r0, p.bias, p.out, p.ldo);
  }
}

// Tiles of 32 rows x 128 K-positions x 64 lanes; each row keeps a cursor into its nonzeros, so the
// transposed activations of one K tile (32 KB) stay in L1 while the rows sweep it. A row's cursor
// stops at its first column at or past the tile's end, so with columns out of order some nonzeros
// wait for a later tile, and the last tile (which ends at or past K) takes every one left: the
// result is right for any column order, and fast for sorted columns.
template <int V>
void k_tile(const CsrParams& p, int64_t n0, int64_t nb, int64_t mc, float (*acc)[64], int64_t* cur) {
  constexpr int64_t kKc = 128;
  for (int64_t r = 0; r < nb; ++r) {
    std::fill(acc[r], acc[r] + 8 * V, 0.0f);
    cur[r] = p.rowptr[n0 + r];
  }
  const float* xt = p.xt + mc;
  for (int64_t k0 = 0; k0 < p.k; k0 += kKc) {
    const int64_t k1 = k0 + kKc;
    for (int64_t r = 0; r < nb; ++r) {
      int64_t j = cur[r];
      const int64_t j1 = p.rowptr[n0 + r + 1];
      if (j >= j1 || col(p, j) >= k1) continue;
      __m256 a[V];
      for (int v = 0; v < V; ++v) a[v] = _mm256_loadu_ps(acc[r] + 8 * v);
      for (; j < j1; ++j) {
        const int64_t c = col(p, j);
        if (c >= k1) break;
        const __m256 w = _mm256_set1_ps(val(p, j));
        const float* xr = xt + c * p.ldt;
        for (int v = 0; v < V; ++v) a[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), a[v]);
      }
      cur[r] = j;
      for (int v = 0; v < V; ++v) _mm256_storeu_ps(acc[r] + 8 * v, a[v]);
    }
  }
}

void tiled_transposed_avx2(const CsrParams& p, int64_t n_begin, int64_t n_end) {
  constexpr int64_t kNB = 32;
  alignas(32) float acc[kNB][64];
  int64_t cur[kNB];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNB) {
    const int64_t nb = std::min(kNB, n_end - n0);
    for (int64_t mc = 0; mc < p.m; mc += 64) {
      const int64_t lanes = std::min<int64_t>(64, p.m - mc);
      switch ((lanes + 7) / 8) {
        case 1: k_tile<1>(p, n0, nb, mc, acc, cur); break;
        case 2: k_tile<2>(p, n0, nb, mc, acc, cur); break;
        case 3: k_tile<3>(p, n0, nb, mc, acc, cur); break;
        case 4: k_tile<4>(p, n0, nb, mc, acc, cur); break;
        case 5: k_tile<5>(p, n0, nb, mc, acc, cur); break;
        case 6: k_tile<6>(p, n0, nb, mc, acc, cur); break;
        case 7: k_tile<7>(p, n0, nb, mc, acc, cur); break;
        default: k_tile<8>(p, n0, nb, mc, acc, cur); break;
      }
      store_lane_tile(acc, nb, lanes, mc, n0, p.bias, p.out, p.ldo);
    }
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(csr_spmm)(const CsrParams& p, int64_t n_begin, int64_t n_end) {
  if (p.xt != nullptr) {
    if (!rows_columns_ok(p, n_begin, n_end)) return false;
    // Denser matrices (>= 40% nonzeros) have enough work per (row, K tile) to pay for the tiles
    // from kCsrTileMinMDense rows on.
    const bool dense = 10 * p.rowptr[p.n] >= 4 * p.n * p.k;
    if (dense && p.m >= kCsrTileMinMDense) {
      tiled_transposed_avx2(p, n_begin, n_end);
    } else {
      transposed_avx2(p, n_begin, n_end);
    }
    return true;
  }
  return for_each_output(p, n_begin, n_end, [&](const float* x, int64_t j0, int64_t j1, bool check, bool* bad) {
    return dot_avx2(p, x, j0, j1, check, bad);
  });
}

}  // namespace compressops::cpu::kernels
