// int8 linear kernels at the avx512_vnni level: vpdpbusd on 512-bit vectors for the GEMM, and
// activation quantization 16 lanes at a time. The weight-only GEMM is common.h's AVX2 code, compiled
// here with this level's flags.
//
// vpdpbusd multiplies unsigned by signed bytes. The weights take the unsigned side as w + 128
// (w xor 0x80, once per loaded vector and shared by every row of the tile) and the activations
// stay signed, so a row's 4-byte group goes in as a plain broadcast; 128 * sum(a) per row comes
// off at the end. vpdpbusd adds without saturation, so the biased int32 sums may wrap: the
// corrected result is the exact sum modulo 2^32, and the exact sum fits (K <= kInt8MaxK), so it
// is exact for every K the pack accepts.
//
// Speed-of-light on the development CPU (AMD EPYC Zen 4, 2 vCPUs): one 512-bit vpdpbusd per cycle
// per core (64 MACs), so 2 * 64 ops/cycle/core; torch._int_mm reaches 0.41 TOP/s on one thread
// there, which this kernel's compute-bound shapes (M >= 16) are measured against. A tile of MR rows
// x NV column blocks issues per k-group of 4: NV weight loads + NV xors + MR broadcasts for MR * NV
// vpdpbusd, so with MR = 8, NV = 3 the other instructions (27 per 24) ride on the load and ALU
// pipes beside the multiplier. At M = 1 the kernel only streams weights: K * N bytes over the
// read bandwidth (cache-resident or DRAM), four streams with a software prefetch.
#include <array>
#include <utility>

#include "common.h"

namespace compressops::cpu::kernels {
namespace {

constexpr int kMaxMR = 8;
constexpr int kMaxNV = 3;
// Column blocks per pass over a row chunk: four tiles of kMaxNV blocks, 192 KiB of weights at
// K = 4096, which stay in L2 while every row tile of the chunk reads them.
constexpr int64_t kGroupBlocks = 4 * kMaxNV;
// Software prefetch distance into each weight stream at M = 1 (k-groups of one block ahead).
constexpr int64_t kPrefetchBytes = 1024;

// 16 inputs from element i of a row, as floats (bf16 widens exactly: it is a float's top half).
inline __m512 load16_x(const void* x, FloatKind kind, int64_t i) {
  if (kind == FloatKind::kF32) return _mm512_loadu_ps(static_cast<const float*>(x) + i);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Quantize one row: quantize_row_avx2's arithmetic (and the scalar rules in common.h for the tail),
// 16 lanes at a time, so every level returns the same bytes.
inline void quantize_row_vnni(const Int8QuantizeParams& p, int64_t r) {
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
    const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
      const __m512 a = _mm512_abs_ps(load16_x(x, p.x_kind, i));
      bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);  // inf or NaN
      vmax = _mm512_max_ps(vmax, a);
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, vmax);
    float amax = 0.0f;
    for (float l : lanes) amax = std::max(amax, l);
    bool nonfinite = bad != 0;
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
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 v = _mm512_mul_ps(load16_x(x, p.x_kind, i), vinv);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN -> 0
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    // MXCSR default: round to nearest even; the values are in [-127, 127], so narrowing is exact
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  for (; i < k; ++i) q[i] = quantize_value(load_x(x, p.x_kind, i) * inv);
  for (; i < p.k_pad; ++i) q[i] = 0;
}

// 128 * sum of row m's k_pad quantized values (mod 2^32: see the header comment).
inline int32_t bias_correction(const Int8GemmParams& p, int64_t m) {
  const int8_t* a = p.a + m * p.lda;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 64 <= p.k_pad; i += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(a + i));
  int32_t s = _mm512_reduce_add_epi32(acc);
  for (; i < p.k_pad; ++i) s += a[i];
  return static_cast<int32_t>(static_cast<uint32_t>(s) << 7);
}

// Epilogue of one row and one block of 16 columns from the corrected int32 sums.
inline void epilogue_vnni(const Int8GemmParams& p, int64_t m, int64_t n0, __m512i v) {
  if (p.out_kind == FloatKind::kF32 && n0 + NR <= p.n) {
    const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(p.a_scale[m]), _mm512_loadu_ps(p.w_scale + n0));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
    if (p.bias) y = _mm512_add_ps(y, _mm512_loadu_ps(p.bias + n0));
    _mm512_storeu_ps(static_cast<float*>(p.out) + m * p.ldo + n0, y);
    return;
  }
  epilogue_avx2(p, m, n0, _mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// The epilogues of a tile: sums[(r * blocks + j) * NR + c] is row m0 + r, column (nb + j) * NR + c.
[[gnu::noinline]] void epilogue_tile(const Int8GemmParams& p, int64_t m0, int rows, int64_t nb, int blocks,
                                     const int32_t* corr, const int32_t* sums) {
  for (int r = 0; r < rows; ++r) {
    const __m512i c = _mm512_set1_epi32(corr[r]);
    for (int j = 0; j < blocks; ++j) {
      const __m512i v = _mm512_load_si512(sums + (r * blocks + j) * NR);
      epilogue_vnni(p, m0 + r, (nb + j) * NR, _mm512_sub_epi32(v, c));
    }
  }
}

// Rows [m0, m0 + MR) x column blocks [nb, nb + NV) over the whole of k. corr[r] is row m0 + r's
// bias_correction.
template <int MR, int NV, bool kPrefetch>
inline void tile_vnni(const Int8GemmParams& p, int64_t m0, int64_t nb, const int32_t* corr) {
  const int64_t kg = p.k_pad / KR;
  const int64_t block_bytes = NR * p.k_pad;
  const int8_t* wblk = p.w + nb * block_bytes;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[MR][NV];
  const int8_t* arow[MR];
  // Fully unrolled loops keep acc in registers (GCC otherwise spills it every k-group).
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_si512();
    arow[r] = p.a + (m0 + r) * p.lda;
  }
  for (int64_t g = 0; g < kg; ++g) {
    __m512i w[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const int8_t* src = wblk + j * block_bytes + g * NR * KR;
      if constexpr (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetchBytes), _MM_HINT_T0);
      w[j] = _mm512_xor_si512(_mm512_loadu_si512(src), flip);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t a4;
      std::memcpy(&a4, arow[r] + g * KR, 4);
      const __m512i a = _mm512_set1_epi32(a4);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], w[j], a);
    }
  }
  // The sums leave registers through memory and the epilogue is a separate call: inlining the
  // epilogues into this function made GCC copy every accumulator to the stack each k-group.
  alignas(64) int32_t sums[MR * NV * NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) _mm512_store_si512(sums + (r * NV + j) * NR, acc[r][j]);
  }
  epilogue_tile(p, m0, MR, nb, NV, corr, sums);
}

using TileFn = void (*)(const Int8GemmParams&, int64_t, int64_t, const int32_t*);

template <bool kPrefetch, int MR, int... NVs>
constexpr std::array<TileFn, kMaxNV> tiles_for_rows(std::integer_sequence<int, NVs...>) {
  return {&tile_vnni<MR, NVs + 1, kPrefetch>...};
}
template <bool kPrefetch, int... MRs>
constexpr std::array<std::array<TileFn, kMaxNV>, kMaxMR> make_tiles(std::integer_sequence<int, MRs...>) {
  return {tiles_for_rows<kPrefetch, MRs + 1>(std::make_integer_sequence<int, kMaxNV>())...};
}
// kTiles[prefetch][rows - 1][blocks - 1]: every tail shape of the MR x NV tile. With one row tile
// (M <= kMaxMR) each weight byte is read once, from L3 or DRAM, so the tile prefetches it; above
// that the row tiles after the first find the group's weights in L2.
constexpr std::array<std::array<std::array<TileFn, kMaxNV>, kMaxMR>, 2> kTiles = {
    make_tiles<false>(std::make_integer_sequence<int, kMaxMR>()),
    make_tiles<true>(std::make_integer_sequence<int, kMaxMR>())};

// One row: four weight streams at a time, prefetched (the bound is the weight read).
inline void gemv_vnni(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end, int32_t corr) {
  int64_t nb = nb_begin;
  for (; nb + 4 <= nb_end; nb += 4) tile_vnni<1, 4, true>(p, 0, nb, &corr);
  for (; nb < nb_end; ++nb) tile_vnni<1, 1, true>(p, 0, nb, &corr);
}

}  // namespace

bool COMPRESSOPS_KERNEL(int8_quantize_rows)(const Int8QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) quantize_row_vnni(p, r);
  return true;
}

bool COMPRESSOPS_KERNEL(int8_gemm)(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  std::vector<int32_t> corr(static_cast<size_t>(p.m));
  for (int64_t m = 0; m < p.m; ++m) corr[m] = bias_correction(p, m);
  if (p.m == 1) {
    gemv_vnni(p, nb_begin, nb_end, corr[0]);
    return true;
  }
  for (int64_t g0 = nb_begin; g0 < nb_end; g0 += kGroupBlocks) {
    const int64_t g1 = std::min(nb_end, g0 + kGroupBlocks);
    for (int64_t m0 = 0; m0 < p.m; m0 += kMaxMR) {
      const int64_t rows = std::min<int64_t>(kMaxMR, p.m - m0);
      for (int64_t nb = g0; nb < g1; nb += kMaxNV) {
        const int64_t blocks = std::min<int64_t>(kMaxNV, g1 - nb);
        kTiles[p.m <= kMaxMR][rows - 1][blocks - 1](p, m0, nb, corr.data() + m0);
      }
    }
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int8_weight_only_gemm)(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  weight_only_gemm_avx2(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
