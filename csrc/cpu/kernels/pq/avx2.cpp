// PQ lookup-table linear kernels at the AVX2 level. The family has no avx512, avx512_vnni or amx
// file, so those levels fall down the chain to these kernels.
//
// k=16: 16-entry tables fit one xmm lane, so one vpshufb looks up a subspace for 32 output rows
// whose 4-bit codes sit in one 32-byte load. Sums of uint8 lookups are accumulated in 16-bit lanes
// (two registers: the whole 16-bit words and the odd bytes shifted down; the even-byte sums are
// recovered as words - (odd << 8), modulo 2^16) and widened to int32 every 256 subspaces, before
// 257 * 255 could exceed 65535.
#include "../kernel_macros.h"
#include "../simd.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

constexpr int64_t kFlushPairs = 128;   // 256 subspaces: 256 * 255 = 65280 <= 65535

// 16 centroids a pass: pq_build_tables declines other counts.
void table_row_avx2(const PqTableParams& p, const float* xs, const float* cb, float* t) {
  const int64_t kc = p.ncent, d = p.d;
  for (int64_t c = 0; c < kc; c += 16) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
      const __m256 xv = _mm256_set1_ps(xs[j]);
      a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cb + j * kc + c), a0);
      a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cb + j * kc + c + 8), a1);
    }
    _mm256_storeu_ps(t + c, a0);
    _mm256_storeu_ps(t + c + 8, a1);
  }
}

// Bit-identical to table_bounds_scalar (see quantize_tables).
void table_bounds_avx2(const PqQuantizeParams& p, const float* tab, float* lows, float* range, bool* finite) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  __m256 rmax = _mm256_setzero_ps();
  for (int64_t s = 0; s < p.s_pad; ++s) {
    const __m256 v0 = _mm256_loadu_ps(tab + s * 16), v1 = _mm256_loadu_ps(tab + s * 16 + 8);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_and_ps(v0, abs_mask), inf, _CMP_LT_OQ));
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_and_ps(v1, abs_mask), inf, _CMP_LT_OQ));
    __m256 lo = _mm256_min_ps(v0, v1), hi = _mm256_max_ps(v0, v1);
    lo = _mm256_min_ps(lo, _mm256_permute2f128_ps(lo, lo, 1));
    hi = _mm256_max_ps(hi, _mm256_permute2f128_ps(hi, hi, 1));
    lo = _mm256_min_ps(lo, _mm256_shuffle_ps(lo, lo, 0x4e));
    hi = _mm256_max_ps(hi, _mm256_shuffle_ps(hi, hi, 0x4e));
    lo = _mm256_min_ps(lo, _mm256_shuffle_ps(lo, lo, 0xb1));
    hi = _mm256_max_ps(hi, _mm256_shuffle_ps(hi, hi, 0xb1));
    rmax = _mm256_max_ps(rmax, _mm256_sub_ps(hi, lo));
    lows[s] = _mm256_cvtss_f32(lo);
  }
  *finite = _mm256_movemask_ps(ok) == 0xff;
  *range = _mm256_cvtss_f32(rmax);
}

// Bit-identical to table_entries_scalar (see quantize_tables).
void table_entries_avx2(const PqQuantizeParams& p, const float* tab, const float* lows, float inv, uint8_t* q) {
  // two subspaces (32 entries) a pass; s_pad is even (codes come in pairs of subspaces)
  const __m256 vinv = _mm256_set1_ps(inv), zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t s = 0; s < p.s_pad; s += 2) {
    __m256i iv[4];
    for (int h = 0; h < 4; ++h) {
      const __m256 lo = _mm256_set1_ps(lows[s + h / 2]);
      __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(tab + s * 16 + 8 * h), lo), vinv);
      v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm256_min_ps(_mm256_max_ps(v, zero), top);
      iv[h] = _mm256_cvttps_epi32(v);
    }
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + s * 16), _mm256_permutevar8x32_epi32(b, order));
  }
}

// Looks up MR input rows' tables for one block of 32 output rows over the pairs [p0, p1) (at most
// kFlushPairs, so the 16-bit lanes cannot wrap past recovery) and adds the sums to acc[r * lda + j].
template <int MR>
inline void scan16_chunk(const uint8_t* blk, const uint8_t* const* q, int64_t p0, int64_t p1, int32_t* acc,
                         int64_t lda) {
  const __m256i mask = _mm256_set1_epi8(0x0f);
  __m256i a[MR], b[MR];
  for (int r = 0; r < MR; ++r) a[r] = b[r] = _mm256_setzero_si256();
  for (int64_t pr = p0; pr < p1; ++pr) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + pr * 32));
    const __m256i lo = _mm256_and_si256(c, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), mask);
    for (int r = 0; r < MR; ++r) {
      const uint8_t* t = q[r] + pr * 32;
      const __m256i t0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
      const __m256i t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
      const __m256i r0 = _mm256_shuffle_epi8(t0, lo);
      const __m256i r1 = _mm256_shuffle_epi8(t1, hi);
      // plain (wrapping) 16-bit adds; never saturating adds, which would corrupt the even bytes
      a[r] = _mm256_add_epi16(a[r], _mm256_add_epi16(r0, r1));
      b[r] = _mm256_add_epi16(b[r], _mm256_add_epi16(_mm256_srli_epi16(r0, 8), _mm256_srli_epi16(r1, 8)));
    }
  }
  for (int r = 0; r < MR; ++r) {
    // even bytes (output rows 2i) and odd bytes (2i + 1) back in row order: the unpacks interleave
    // within 128-bit lanes, so rows 0-7 | 16-23 come from `il` and 8-15 | 24-31 from `ih`
    const __m256i ev = _mm256_sub_epi16(a[r], _mm256_slli_epi16(b[r], 8));
    const __m256i il = _mm256_unpacklo_epi16(ev, b[r]), ih = _mm256_unpackhi_epi16(ev, b[r]);
    const __m256i w[4] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(il)),
                          _mm256_cvtepu16_epi32(_mm256_castsi256_si128(ih)),
                          _mm256_cvtepu16_epi32(_mm256_extracti128_si256(il, 1)),
                          _mm256_cvtepu16_epi32(_mm256_extracti128_si256(ih, 1))};
    int32_t* o = acc + r * lda;
    for (int v = 0; v < 4; ++v) {
      __m256i* ov = reinterpret_cast<__m256i*>(o + 8 * v);
      _mm256_storeu_si256(ov, _mm256_add_epi32(_mm256_loadu_si256(ov), w[v]));
    }
  }
}

// Loop order: rows in tiles of kScanRowTile; per tile, pairs in chunks of kFlushPairs; per chunk,
// rows in groups of 4; per group, every block of 32 output rows. A group's table slices for one
// chunk (4 x 4 KiB) stay in L1 while the codes stream past; looping over whole blocks instead
// re-read 64 KiB of tables per block from L2, and the loads stalled (perf). Partial sums live in
// int32 scratch [tile rows][blocks * 32] across chunks. Same-process A/B against the block-outer
// order, K=4096: 1.08-1.18x faster from M=4 to M=512 (1.14-1.19x at N=11008).
void scan16(const Pq16ScanParams& p, int64_t nb0, int64_t nb1) {
  constexpr int MR = 4;
  constexpr int64_t kScanRowTile = 16;
  const int64_t pairs = p.s_pad / 2, nbs = nb1 - nb0, lda = nbs * 32;
  if (p.m < MR) {
    // A few rows: block-outer order. One row's table (s_pad * 16 bytes) is L1-sized up to K=8192
    // at d=4, and each block's codes stream contiguously, which the prefetcher prefers (the
    // chunked order below measured 2-12% slower here).
    alignas(32) int32_t acc1[32];
    for (int64_t nb = nb0; nb < nb1; ++nb) {
      for (int64_t r = 0; r < p.m; ++r) {
        const uint8_t* q[1] = {p.qtab + r * p.s_pad * 16};
        std::memset(acc1, 0, sizeof(acc1));
        for (int64_t p0 = 0; p0 < pairs; p0 += kFlushPairs)
          scan16_chunk<1>(p.codes + nb * pairs * 32, q, p0, std::min(pairs, p0 + kFlushPairs), acc1, 0);
        finish_block16(p, r, nb, acc1);
      }
    }
    return;
  }
  std::vector<int32_t> acc(static_cast<size_t>(std::min(kScanRowTile, p.m) * lda));
  for (int64_t mt = 0; mt < p.m; mt += kScanRowTile) {
    const int64_t rows = std::min(kScanRowTile, p.m - mt);
    std::fill(acc.begin(), acc.end(), 0);
    for (int64_t p0 = 0; p0 < pairs; p0 += kFlushPairs) {
      const int64_t p1 = std::min(pairs, p0 + kFlushPairs);
      int64_t r = 0;
      for (; r + MR <= rows; r += MR) {
        const uint8_t* q[MR];
        for (int i = 0; i < MR; ++i) q[i] = p.qtab + (mt + r + i) * p.s_pad * 16;
        for (int64_t nb = nb0; nb < nb1; ++nb)
          scan16_chunk<MR>(p.codes + nb * pairs * 32, q, p0, p1, acc.data() + r * lda + (nb - nb0) * 32, lda);
      }
      for (; r < rows; ++r) {
        const uint8_t* q[1] = {p.qtab + (mt + r) * p.s_pad * 16};
        for (int64_t nb = nb0; nb < nb1; ++nb)
          scan16_chunk<1>(p.codes + nb * pairs * 32, q, p0, p1, acc.data() + r * lda + (nb - nb0) * 32, lda);
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t nb = nb0; nb < nb1; ++nb) finish_block16(p, mt + r, nb, acc.data() + r * lda + (nb - nb0) * 32);
  }
}

// k=256 batched: tab[s][c][0:MT] for the tile's MT rows; 4 centroids a pass so each x load
// feeds 4 FMAs.
template <int MT>
void build_slice(const Pq256BatchParams& p, int64_t tile, int64_t s0, int64_t s1, float* tab) {
  constexpr int NV = MT / 8;
  const int64_t d = p.d;
  for (int64_t s = s0; s < s1; ++s) {
    float* t = tab + (s - s0) * 256 * MT;
    const float* cb = p.cb_t + s * d * 256;
    const float* xs = p.xt + s * d * p.ldxt + tile * MT;
    for (int64_t c = 0; c < 256; c += 4) {
      __m256 a[4][NV];
      for (int i = 0; i < 4; ++i)
        for (int v = 0; v < NV; ++v) a[i][v] = _mm256_setzero_ps();
      for (int64_t j = 0; j < d; ++j) {
        __m256 xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = _mm256_loadu_ps(xs + j * p.ldxt + 8 * v);
        for (int i = 0; i < 4; ++i) {
          const __m256 w = _mm256_broadcast_ss(cb + j * 256 + c + i);
          for (int v = 0; v < NV; ++v) a[i][v] = _mm256_fmadd_ps(w, xv[v], a[i][v]);
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int v = 0; v < NV; ++v) _mm256_storeu_ps(t + (c + i) * MT + 8 * v, a[i][v]);
    }
  }
}

// One block of 8 output rows over g subspaces: RB rows a pass (8 for MT=8, 4 for MT=16), so the
// accumulators (8 ymm) stay in registers; each code byte selects one MT-float table row.
template <int MT>
inline void scan_block(const uint8_t* blk, int64_t g, const float* tab, float* part, bool first) {
  constexpr int NV = MT / 8, RB = 8 / NV;
  for (int h = 0; h < 8; h += RB) {
    __m256 a[RB][NV];
    for (int i = 0; i < RB; ++i)
      for (int v = 0; v < NV; ++v)
        a[i][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(part + (h + i) * MT + 8 * v);
    for (int64_t t = 0; t < g; ++t) {
      const float* tt = tab + t * 256 * MT;
      const uint8_t* cp = blk + t * 8 + h;
      for (int i = 0; i < RB; ++i) {
        const float* e = tt + static_cast<int64_t>(cp[i]) * MT;
        for (int v = 0; v < NV; ++v) a[i][v] = _mm256_add_ps(a[i][v], _mm256_loadu_ps(e + 8 * v));
      }
    }
    for (int i = 0; i < RB; ++i)
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(part + (h + i) * MT + 8 * v, a[i][v]);
  }
}

// One input row (MT=1): the slice is plain tab[s][c]; 8 centroids a vector.
template <>
void build_slice<1>(const Pq256BatchParams& p, int64_t, int64_t s0, int64_t s1, float* tab) {
  const int64_t d = p.d;
  for (int64_t s = s0; s < s1; ++s) {
    float* t = tab + (s - s0) * 256;
    const float* cb = p.cb_t + s * d * 256;
    const float* xs = p.xt + s * d * p.ldxt;
    for (int64_t c = 0; c < 256; c += 32) {
      __m256 a[4];
      for (int v = 0; v < 4; ++v) a[v] = _mm256_setzero_ps();
      for (int64_t j = 0; j < d; ++j) {
        const __m256 xv = _mm256_set1_ps(xs[j * p.ldxt]);
        for (int v = 0; v < 4; ++v) a[v] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cb + j * 256 + c + 8 * v), a[v]);
      }
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(t + c + 8 * v, a[v]);
    }
  }
}

// One input row: scalar loads, one accumulator per output row of the block, so the 8 chains run
// side by side (on Zen 3 this beats vpgatherdd over the 8 rows). This level reads 8 codes with one
// 64-bit load and adds two subspaces' entries together before the accumulator, which halves the
// depth of each chain: 0.23 against 0.30 ns a lookup on Zen 3 (a standalone A/B, 1 thread).
// The empty asm keeps GCC from packing the 8 sums into one ymm built lane by lane (vinsertps),
// which is slower than the gather.
template <>
inline void scan_block<1>(const uint8_t* blk, int64_t g, const float* tab, float* part, bool first) {
  float a[8];
  for (int i = 0; i < 8; ++i) a[i] = first ? 0.0f : part[i];
  int64_t t = 0;
  for (; t + 2 <= g; t += 2) {
    const float* tt = tab + t * 256;
    uint64_t c0, c1;
    std::memcpy(&c0, blk + t * 8, 8);
    std::memcpy(&c1, blk + t * 8 + 8, 8);
    for (int i = 0; i < 8; ++i) {
      float lo = tt[(c0 >> (8 * i)) & 255];
      const float hi = tt[256 + ((c1 >> (8 * i)) & 255)];
      asm("" : "+x"(lo));
      a[i] += lo + hi;
    }
  }
  for (; t < g; ++t) {
    const float* tt = tab + t * 256;
    for (int i = 0; i < 8; ++i) {
      float v = tt[blk[t * 8 + i]];
      asm("" : "+x"(v));
      a[i] += v;
    }
  }
  for (int i = 0; i < 8; ++i) part[i] = a[i];
}

}  // namespace

bool COMPRESSOPS_KERNEL(pq256_batch)(const Pq256BatchParams& p, int64_t u0, int64_t u1) {
  return batch256_tiles(p, u0, u1);
}

bool COMPRESSOPS_KERNEL(pq_build_tables)(const PqTableParams& p, int64_t u0, int64_t u1) {
  if (p.ncent % 16 != 0) return false;
  build_tables<table_row_avx2>(p, u0, u1);
  return true;
}

bool COMPRESSOPS_KERNEL(pq16_quantize_tables)(const PqQuantizeParams& p, int64_t m0, int64_t m1) {
  quantize_tables<table_bounds_avx2, table_entries_avx2>(p, m0, m1);
  return true;
}

bool COMPRESSOPS_KERNEL(pq16_scan)(const Pq16ScanParams& p, int64_t nb0, int64_t nb1) {
  if (nb0 < nb1) scan16(p, nb0, nb1);
  return true;
}

}  // namespace compressops::cpu::kernels
