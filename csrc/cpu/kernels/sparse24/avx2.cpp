// 2:4 sparse linear kernels at the AVX2 level. The family has no avx512, avx512_vnni or amx file, so
// those levels fall down the chain to these kernels.
//
// Float values (fp32 or bf16), small batches: one output row at a time; each metadata byte covers
// 8 K-positions (2 groups, 4 kept values). A 256-entry table turns a byte into 4 lane indices, two
// bytes make the 8 indices of a vpermps pair (x[k..k+8] and x[k+8..k+16], blended), and one FMA
// per 8 kept values. Weights stream once per batch row block (they stay in L1/L2 across rows).
// Large batches: the host passes x transposed ([kp, ldt]); each kept weight is broadcast and
// FMA'd across up to 64 batch lanes, over tiles of 32 output rows x 128 K-positions, so a tile of
// the transposed activations stays in L1 while the accumulators live in a small buffer.
// int8 values: the kept-position byte indices are computed in registers from 8 metadata bytes,
// the quantized row is shuffled with vpshufb to the kept positions (32 a step) and multiplied with
// vpmaddubsw/vpmaddwd; the int32 sums are exact, the epilogue matches the reference.
#include <algorithm>

#include "../kernel_macros.h"
#include "../lane_tile_store.h"
#include "../simd.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

// For a metadata byte: the 4 kept positions within its 8 K-positions, as int32 lanes / as bytes.
struct Lut {
  alignas(16) int32_t idx[256][4];
  uint32_t bytes[256];
  Lut() {
    for (int b = 0; b < 256; ++b) {
      const int p[4] = {b & 3, (b >> 2) & 3, 4 + ((b >> 4) & 3), 4 + ((b >> 6) & 3)};
      uint32_t packed = 0;
      for (int i = 0; i < 4; ++i) {
        idx[b][i] = p[i];
        packed |= static_cast<uint32_t>(p[i]) << (8 * i);
      }
      bytes[b] = packed;
    }
  }
};
const Lut& lut() {
  static const Lut t;
  return t;
}

inline __m256 load8_values(const void* row, int bf16, int64_t j) {
  if (!bf16) return _mm256_loadu_ps(static_cast<const float*>(row) + j);
  return bf16x8_to_f32(static_cast<const uint16_t*>(row) + j);
}

inline __m256i idx_pair(const Lut& t, unsigned b0, unsigned b1) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t.idx[b0]))),
      _mm_load_si128(reinterpret_cast<const __m128i*>(t.idx[b1])), 1);
}

// x at the 8 kept positions of K-positions [k, k+16) (metadata bytes b0, b1), in K order. A group
// of 4 fp32 is one 128-bit lane, so in-lane vpermilps does the selection. xs is x with the groups
// of every 16 positions stored in the order 0, 2, 1, 3 (the host builds it once per call): A =
// xs[0..8) holds groups 0 and 2, B = xs[8..16) groups 1 and 3; each picks its group's 2 values into
// lane elements 0-1 (A) or 2-3 (B) with the same index vector (vpermilps reads the low 2 bits, so
// the +4 of the odd groups drops out), and one blend puts them in K order.
inline __m256 gather16(const Lut& t, const float* xs, unsigned b0, unsigned b1) {
  const __m256i idx = idx_pair(t, b0, b1);
  const __m256 a = _mm256_loadu_ps(xs);
  const __m256 b = _mm256_loadu_ps(xs + 8);
  return _mm256_blend_ps(_mm256_permutevar_ps(a, idx), _mm256_permutevar_ps(b, idx), 0xCC);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float dot_row_avx2(const Lut& t, const Sparse24Params& p, const void* vrow, const uint8_t* mrow,
                          const float* x, const float* xs) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= p.kp; k += 64) {  // 4 independent FMA chains hide the FMA latency
    uint64_t mb;
    std::memcpy(&mb, mrow + k / 8, 8);
    const int64_t j = k / 2;
    const int bf = p.values_bf16;
    acc0 = _mm256_fmadd_ps(gather16(t, xs + k, mb & 255u, (mb >> 8) & 255u), load8_values(vrow, bf, j), acc0);
    acc1 = _mm256_fmadd_ps(gather16(t, xs + k + 16, (mb >> 16) & 255u, (mb >> 24) & 255u),
                           load8_values(vrow, bf, j + 8), acc1);
    acc2 = _mm256_fmadd_ps(gather16(t, xs + k + 32, (mb >> 32) & 255u, (mb >> 40) & 255u),
                           load8_values(vrow, bf, j + 16), acc2);
    acc3 = _mm256_fmadd_ps(gather16(t, xs + k + 48, (mb >> 48) & 255u, (mb >> 56) & 255u),
                           load8_values(vrow, bf, j + 24), acc3);
  }
  acc0 = _mm256_add_ps(acc0, acc2);
  acc1 = _mm256_add_ps(acc1, acc3);
  for (; k + 32 <= p.kp; k += 32) {
    uint32_t mb;
    std::memcpy(&mb, mrow + k / 8, 4);
    const int64_t j = k / 2;
    acc0 = _mm256_fmadd_ps(gather16(t, xs + k, mb & 255u, (mb >> 8) & 255u), load8_values(vrow, p.values_bf16, j),
                           acc0);
    acc1 = _mm256_fmadd_ps(gather16(t, xs + k + 16, (mb >> 16) & 255u, mb >> 24),
                           load8_values(vrow, p.values_bf16, j + 8), acc1);
  }
  return hsum(_mm256_add_ps(acc0, acc1)) + dot_groups(p, vrow, mrow, x, k / 4, p.kp / 4);
}

// Transposed path: rows [n0, n0 + nb) x batch lanes [mc, mc + 8V), accumulators in acc[nb][64].
// S accumulator sets: kept value j of a row goes to set j % S, so S * V FMA chains are in flight.
// With one set a row's FMAs form V chains, and at few batch lanes the kernel waits on FMA latency;
// S is chosen per V for at least 8 chains where 16 registers allow it.
template <int V, int S>
void tile_rows(const Sparse24Params& p, int64_t n0, int64_t nb, int64_t mc, float (*acc)[64]) {
  constexpr int64_t kKc = 128;
  constexpr int kGroupsPerStep = S >= 2 ? S / 2 : 1;
  for (int64_t r = 0; r < nb; ++r) std::fill(acc[r], acc[r] + 8 * V, 0.0f);
  for (int64_t k0 = 0; k0 < p.kp; k0 += kKc) {
    const int64_t g0 = k0 / 4, g1 = std::min(p.kp, k0 + kKc) / 4;
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t n = n0 + r;
      const void* vrow = values_row(p, n);
      const uint8_t* mrow = p.meta + n * p.meta_stride;
      __m256 a[S][V];
      for (int v = 0; v < V; ++v) a[0][v] = _mm256_loadu_ps(acc[r] + 8 * v);
      for (int s = 1; s < S; ++s) {
        for (int v = 0; v < V; ++v) a[s][v] = _mm256_setzero_ps();
      }
      auto group = [&](int64_t g, __m256* sa, __m256* sb) {
        int64_t ka, kb;
        group_positions(mrow, g, &ka, &kb);
        const __m256 wa = _mm256_set1_ps(value_at(p, vrow, 2 * g));
        const __m256 wb = _mm256_set1_ps(value_at(p, vrow, 2 * g + 1));
        const float* xa = p.xt + ka * p.ldt + mc;
        const float* xb = p.xt + kb * p.ldt + mc;
        for (int v = 0; v < V; ++v) sa[v] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(xa + 8 * v), sa[v]);
        for (int v = 0; v < V; ++v) sb[v] = _mm256_fmadd_ps(wb, _mm256_loadu_ps(xb + 8 * v), sb[v]);
      };
      int64_t g = g0;
      for (; g + kGroupsPerStep <= g1; g += kGroupsPerStep) {
        for (int u = 0; u < kGroupsPerStep; ++u) group(g + u, a[(2 * u) % S], a[(2 * u + 1) % S]);
      }
      for (; g < g1; ++g) group(g, a[0], a[S > 1 ? 1 : 0]);
      for (int v = 0; v < V; ++v) {
        __m256 t = a[0][v];
        for (int s = 1; s < S; ++s) t = _mm256_add_ps(t, a[s][v]);
        _mm256_storeu_ps(acc[r] + 8 * v, t);
      }
    }
  }
}

void transposed_avx2(const Sparse24Params& p, int64_t n_begin, int64_t n_end) {
  constexpr int64_t kNB = 32;
  alignas(32) float acc[kNB][64];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNB) {
    const int64_t nb = std::min(kNB, n_end - n0);
    for (int64_t mc = 0; mc < p.m; mc += 64) {
      const int64_t lanes = std::min<int64_t>(64, p.m - mc);
      switch ((lanes + 7) / 8) {
        case 1: tile_rows<1, 8>(p, n0, nb, mc, acc); break;
        case 2: tile_rows<2, 4>(p, n0, nb, mc, acc); break;
        case 3: tile_rows<3, 4>(p, n0, nb, mc, acc); break;
        case 4: tile_rows<4, 2>(p, n0, nb, mc, acc); break;
        case 5: tile_rows<5, 2>(p, n0, nb, mc, acc); break;
        case 6: tile_rows<6, 2>(p, n0, nb, mc, acc); break;
        case 7: tile_rows<7, 1>(p, n0, nb, mc, acc); break;
        default: tile_rows<8, 1>(p, n0, nb, mc, acc); break;
      }
      store_lane_tile(acc, nb, lanes, mc, n0, p.bias, p.out, p.ldo);
    }
  }
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// int8, one row, 64 K-positions (32 kept values) a step, indices computed in registers:
// output byte b of lane L holds kept value i (lane 0: 0-7 then 16-23, lane 1: 8-15 then 24-31);
// its metadata byte is i/4, its nibble (i/2)%2, its slot i%2 and its offset 4*((i/2)%4) in the
// 16-byte lane of x it comes from (A = x[k..k+32) for values 0-15, B = x[k+32..k+64) for 16-31).
constexpr uint8_t kSel[32] = {0, 0, 0, 0, 1, 1, 1, 1, 4, 4, 4, 4, 5, 5, 5, 5,
                              2, 2, 2, 2, 3, 3, 3, 3, 6, 6, 6, 6, 7, 7, 7, 7};
constexpr uint8_t kNibhi[32] = {0, 0, 128, 128, 0, 0, 128, 128, 0, 0, 128, 128, 0, 0, 128, 128,
                                0, 0, 128, 128, 0, 0, 128, 128, 0, 0, 128, 128, 0, 0, 128, 128};
constexpr uint8_t kSlot[32] = {0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128,
                               0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128, 0, 128};
constexpr uint8_t kOff[32] = {0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,
                              0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12};
constexpr uint8_t kZeroHi[32] = {0, 0, 0, 0, 0, 0, 0, 0, 128, 128, 128, 128, 128, 128, 128, 128,
                                 0, 0, 0, 0, 0, 0, 0, 0, 128, 128, 128, 128, 128, 128, 128, 128};
constexpr uint8_t kZeroLo[32] = {128, 128, 128, 128, 128, 128, 128, 128, 0, 0, 0, 0, 0, 0, 0, 0,
                                 128, 128, 128, 128, 128, 128, 128, 128, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i load_const(const uint8_t* c) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)); }

inline int32_t idot_row_avx2(const Lut& t, const Sparse24Int8Params& p, const int8_t* vrow, const uint8_t* mrow,
                             const int8_t* q) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  const __m256i sel = load_const(kSel), nibhi = load_const(kNibhi), slot = load_const(kSlot);
  const __m256i off = load_const(kOff), zero_hi = load_const(kZeroHi), zero_lo = load_const(kZeroLo);
  const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
  int64_t k = 0;
  for (; k + 64 <= p.kp; k += 64) {
    uint64_t mb;
    std::memcpy(&mb, mrow + k / 8, 8);
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi64x(static_cast<int64_t>(mb)), sel);
    const __m256i nib = _mm256_blendv_epi8(_mm256_and_si256(b, low4),
                                           _mm256_and_si256(_mm256_srli_epi16(b, 4), low4), nibhi);
    const __m256i pos = _mm256_blendv_epi8(_mm256_and_si256(nib, low2),
                                           _mm256_and_si256(_mm256_srli_epi16(nib, 2), low2), slot);
    const __m256i idx = _mm256_add_epi8(pos, off);
    const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k));
    const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k + 32));
    const __m256i xg = _mm256_or_si256(_mm256_shuffle_epi8(xa, _mm256_or_si256(idx, zero_hi)),
                                       _mm256_shuffle_epi8(xb, _mm256_or_si256(idx, zero_lo)));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vrow + k / 2)),
                                                 0xD8);
    const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(xg), _mm256_sign_epi8(w, xg));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, ones));
  }
  for (; k + 32 <= p.kp; k += 32) {
    uint32_t mb;
    std::memcpy(&mb, mrow + k / 8, 4);
    const uint64_t lo = t.bytes[mb & 255u] | (static_cast<uint64_t>(t.bytes[(mb >> 8) & 255u] + 0x08080808u) << 32);
    const uint64_t hi =
        t.bytes[(mb >> 16) & 255u] | (static_cast<uint64_t>(t.bytes[mb >> 24] + 0x08080808u) << 32);
    // Bytes 8..15 of each lane: index 0xff (high bit) shuffles in zero.
    const __m256i idx = _mm256_set_epi64x(-1, static_cast<int64_t>(hi), -1, static_cast<int64_t>(lo));
    const __m256i xg = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k)), idx);
    const __m128i w16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vrow + k / 2));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_castsi128_si256(w16), 0x50);
    const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(xg), _mm256_sign_epi8(w, xg));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, ones));
  }
  return hsum_i32(acc) + idot_groups(p, vrow, mrow, q, k / 4, p.kp / 4);
}

// int8, large batches: qt16 is the quantized block transposed and widened to int16 [kp, ldt16]
// (ldt16 a multiple of 16). For each group, the rows of its two kept positions are interleaved
// (vpunpck{l,h}wd) and vpmaddwd'd with the broadcast (v0, v1) pair: 32 exact MACs per 16 lanes.
// The accumulators keep the unpack lane order; the epilogue restores it.
template <int V>
void i8_tile_rows(const Sparse24Int8Params& p, const int16_t* qt, int64_t ldt, int64_t n0, int64_t nb, int64_t mc,
                  int32_t (*acc)[64]) {
  constexpr int64_t kKc = 256;
  const int64_t half = p.kp / 2;
  for (int64_t r = 0; r < nb; ++r) std::fill(acc[r], acc[r] + 16 * V, 0);
  for (int64_t k0 = 0; k0 < p.kp; k0 += kKc) {
    const int64_t g0 = k0 / 4, g1 = std::min(p.kp, k0 + kKc) / 4;
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t n = n0 + r;
      const int8_t* vrow = p.values + n * half;
      const uint8_t* mrow = p.meta + n * p.meta_stride;
      __m256i lo[V], hi[V];
      for (int v = 0; v < V; ++v) {
        lo[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc[r] + 16 * v));
        hi[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc[r] + 16 * v + 8));
      }
      for (int64_t g = g0; g < g1; ++g) {
        int64_t ka, kb;
        group_positions(mrow, g, &ka, &kb);
        const uint32_t lo16 = static_cast<uint16_t>(static_cast<int16_t>(vrow[2 * g]));
        const uint32_t hi16 = static_cast<uint16_t>(static_cast<int16_t>(vrow[2 * g + 1]));
        const uint32_t pair = lo16 | (hi16 << 16);
        const __m256i w = _mm256_set1_epi32(static_cast<int32_t>(pair));
        const int16_t* xa = qt + ka * ldt + mc;
        const int16_t* xb = qt + kb * ldt + mc;
        for (int v = 0; v < V; ++v) {
          const __m256i ra = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + 16 * v));
          const __m256i rb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 16 * v));
          lo[v] = _mm256_add_epi32(lo[v], _mm256_madd_epi16(_mm256_unpacklo_epi16(ra, rb), w));
          hi[v] = _mm256_add_epi32(hi[v], _mm256_madd_epi16(_mm256_unpackhi_epi16(ra, rb), w));
        }
      }
      for (int v = 0; v < V; ++v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[r] + 16 * v), lo[v]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[r] + 16 * v + 8), hi[v]);
      }
    }
  }
  // unpack order -> lane order: lo = lanes 0-3 | 8-11, hi = lanes 4-7 | 12-15
  for (int64_t r = 0; r < nb; ++r) {
    for (int v = 0; v < V; ++v) {
      const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc[r] + 16 * v));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc[r] + 16 * v + 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[r] + 16 * v), _mm256_permute2x128_si256(l, h, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[r] + 16 * v + 8), _mm256_permute2x128_si256(l, h, 0x31));
    }
  }
}

void i8_transposed_avx2(const Sparse24Int8Params& p, int64_t n_begin, int64_t n_end) {
  constexpr int64_t kNB = 32;
  alignas(32) int32_t acc[kNB][64];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNB) {
    const int64_t nb = std::min(kNB, n_end - n0);
    for (int64_t mc = 0; mc < p.m; mc += 64) {
      const int64_t lanes = std::min<int64_t>(64, p.m - mc);
      switch ((lanes + 15) / 16) {
        case 1: i8_tile_rows<1>(p, p.qt16, p.ldt16, n0, nb, mc, acc); break;
        case 2: i8_tile_rows<2>(p, p.qt16, p.ldt16, n0, nb, mc, acc); break;
        case 3: i8_tile_rows<3>(p, p.qt16, p.ldt16, n0, nb, mc, acc); break;
        default: i8_tile_rows<4>(p, p.qt16, p.ldt16, n0, nb, mc, acc); break;
      }
      for (int64_t r = 0; r < nb; ++r) {
        for (int64_t l = 0; l < lanes; ++l) store_i8(p, mc + l, n0 + r, acc[r][l]);
      }
    }
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(sparse24_f)(const Sparse24Params& p, int64_t n_begin, int64_t n_end) {
  if (p.xt != nullptr) {
    transposed_avx2(p, n_begin, n_end);
    return true;
  }
  const Lut& t = lut();
  for_each_output(p, n_begin, n_end, [&](const void* vrow, const uint8_t* mrow, int64_t m) {
    return dot_row_avx2(t, p, vrow, mrow, p.x + m * p.ldx, p.xs + m * p.ldxs);
  });
  return true;
}

bool COMPRESSOPS_KERNEL(sparse24_i8)(const Sparse24Int8Params& p, int64_t n_begin, int64_t n_end) {
  if (p.qt16 != nullptr) {
    i8_transposed_avx2(p, n_begin, n_end);
    return true;
  }
  const Lut& t = lut();
  for_each_output(p, n_begin, n_end, [&](const int8_t* vrow, const uint8_t* mrow, int64_t m) {
    return idot_row_avx2(t, p, vrow, mrow, p.q + m * p.ldq);
  });
  return true;
}

}  // namespace compressops::cpu::kernels
