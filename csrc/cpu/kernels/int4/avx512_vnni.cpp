// int4 (W4A8) linear GEMM at the avx512_vnni level: vpdpbusd on 512-bit vectors. Activation
// quantization has no 512-bit form here (with the call's fixed costs it is under 2% of a 4096x4096
// call at M = 64, measured with N = 8): that op falls down the chain to the avx2 kernel.
//
// The weight nibbles are unsigned (0..15), so they are vpdpbusd's unsigned operand as they stand and
// the signed int8 activations its signed one: no +128 shift of either side and no correction term
// beyond the format's own zero-point term (a_corr, kernel.h). Each 4-product sum is at most
// 4 * 15 * 127 and a group's sum at most 256 * 15 * 127, so the int32 lanes are exact, and the fp32
// epilogue is scalar.cpp's: per group y = fma(float(acc), s * a_scale, y), y = fma(-zs, a_corr, y),
// then y + bias; so this level's output equals scalar's and avx2's bit for bit.
//
// One zmm holds the 32-byte chunk j (4 k in each nibble of 8 columns, int4_layout.h) of two
// neighbouring column blocks: lanes 0-7 block b, lanes 8-15 block b + 1. Then both nibble halves
// pair with one activation dword broadcast to all 16 lanes, and each accumulator lane is one output
// column for the whole group: no in-register reduction. The broadcast is a separate vpbroadcastd
// shared by the row's vpdpbusds: the embedded {1to16} memory form of vpdpbusd ran at about half the
// speed on Zen 4.
//
// Speed of light on AMD Zen 4 (the development CPU: EPYC family 25 model 17): one 512-bit vpdpbusd
// per cycle per core, 64 int8 MACs a cycle (measured: 204-228 GMAC/s on one core at about 3.5 GHz,
// 16 independent chains). The nibble unpack (vpand, vpsrlw, vpand, one vinserti64x4 per 16 columns
// x 8 k) is shared by every row of the tile and costs nothing measurable.
// - M > 1 (tile 4 rows x 48 columns): per 8 k, 24 vpdpbusd, 8 broadcasts, 6 weight loads and 9
//   unpack ops; bound by vpdpbusd: K / 64 cycles per output. 4096x4096x64 is 16.8 M vpdpbusd-cycles,
//   2.4 ms on 2 cores at 3.5 GHz. Measured on one core: about 155-175 GMAC/s, 70-80% of it. With
//   the fp32 accumulators in L1 instead of registers the same loop ran ~15% slower.
// - M = 1 (64 columns, 8 weight streams): K / 2 + 8 * K / group_size bytes per output column
//   (2304 at K = 4096, g128: 9.4 MB for 4096 columns); bound by the read bandwidth of whichever
//   cache holds the weights (L3 when they fit, else DRAM), not by the 4 vpdpbusd per 64 bytes.
#include "../kernel_macros.h"
#include "../simd.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

inline __m512i bcast4(const int8_t* ptr) {
  int32_t v;
  std::memcpy(&v, ptr, 4);
  return _mm512_set1_epi32(v);
}

// 32 bytes at lo in lanes 0-7 and 32 bytes at hi in lanes 8-15; without a second block (pair
// false) the upper lanes are zero (they add nothing and are never stored). Called with pair a
// constant of the unrolled tile loops, so the test folds away.
inline __m512i load_pair(const uint8_t* lo, const uint8_t* hi, bool pair) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  if (!pair) return _mm512_inserti64x4(_mm512_setzero_si512(), a, 0);
  return _mm512_inserti64x4(_mm512_castsi256_si512(a), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)), 1);
}

// Columns [n0, n0 + cols) of row m (cols <= 8) from 8 fp32 lanes.
inline void store8(const Int4GemmParams& p, int64_t m, int64_t n0, int64_t cols, __m256 v) {
  if (cols < NR) {
    alignas(32) float tmp[NR];
    _mm256_store_ps(tmp, v);
    for (int64_t c = 0; c < cols; ++c) store_out(p, m, n0 + c, tmp[c]);
    return;
  }
  if (p.out_kind == Int4FloatKind::kF32) {
    _mm256_storeu_ps(static_cast<float*>(p.out) + m * p.ldo + n0, v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p.out) + m * p.ldo + n0), f32x8_to_bf16(v));
  }
}

// bias[n0, n0 + cols) in 8 lanes (zeros beyond cols, or without a bias).
inline __m256 load_bias8(const Int4GemmParams& p, int64_t n0, int64_t cols) {
  if (!p.bias || cols <= 0) return _mm256_setzero_ps();
  if (cols >= NR) return _mm256_loadu_ps(p.bias + n0);
  alignas(32) float tmp[NR] = {};
  for (int64_t c = 0; c < cols; ++c) tmp[c] = p.bias[n0 + c];
  return _mm256_load_ps(tmp);
}

// MR rows [r0, r0 + MR) x NB column blocks [nb, nb + NB) (NB <= 8: NZ = ceil(NB / 2) zmm per row).
// kSplit keeps the low- and high-nibble products in separate accumulators (summed, exactly, once per
// group): with one or two rows there are too few accumulators to cover vpdpbusd's latency otherwise.
// kPrefetch: weight streaming (M = 1), each block's run read ahead by software.
template <int MR, int NB, bool kSplit, bool kPrefetch>
void tile_vnni(const Int4GemmParams& p, int64_t nb, int64_t r0) {
  constexpr int NZ = (NB + 1) / 2;
  constexpr int NS = kSplit ? 2 : 1;
  // Bytes ahead of the current chunk: far enough to cover the latency of L3/DRAM at one chunk of
  // each stream per ~4 cycles, near enough to stay in the same block's run most of the time.
  constexpr int64_t kAhead = 1536;
  const int64_t gs = p.group_size;
  const int64_t gstride = int4_group_stride(gs);
  const int64_t bstride = gstride * p.groups;
  const __m512i mask = _mm512_set1_epi8(0x0f);
  // fp32 accumulators in registers: through L1 (load, store per group) they cost ~15% at M = 64.
  __m512 y[MR][NZ];
  for (int r = 0; r < MR; ++r)
    for (int z = 0; z < NZ; ++z) y[r][z] = _mm512_setzero_ps();
  const uint8_t* wb[2 * NZ];
  for (int b = 0; b < 2 * NZ; ++b) wb[b] = p.w + (nb + std::min(b, NB - 1)) * bstride;
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = p.a + (r0 + r) * p.lda;

  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t kg = g * gs;
    const int64_t go = g * gstride;
    // acc: low-nibble products (and, without kSplit, the high ones); acc2: the high ones.
    __m512i acc[MR * NZ], acc2[NS == 2 ? MR * NZ : 1];
    for (int i = 0; i < MR * NZ; ++i) acc[i] = _mm512_setzero_si512();
    for (int i = 0; i < (NS == 2 ? MR * NZ : 1); ++i) acc2[i] = _mm512_setzero_si512();
    for (int64_t j = 0; j < gs / 8; ++j) {
      __m512i lo[NZ], hi[NZ];
      for (int z = 0; z < NZ; ++z) {
        const uint8_t* a = wb[2 * z] + go + j * 32;
        const uint8_t* b = wb[2 * z + 1] + go + j * 32;
        if constexpr (kPrefetch) {
          if ((j & 1) == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(a) + kAhead, _MM_HINT_T0);
            if (2 * z + 1 < NB) _mm_prefetch(reinterpret_cast<const char*>(b) + kAhead, _MM_HINT_T0);
          }
        }
        const __m512i v = load_pair(a, b, 2 * z + 1 < NB);
        lo[z] = _mm512_and_si512(v, mask);
        hi[z] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
      }
      for (int r = 0; r < MR; ++r) {
        const int8_t* xp = xr[r] + kg + j * 8;
        const __m512i xa = bcast4(xp), xb = bcast4(xp + 4);
        for (int z = 0; z < NZ; ++z) {
          __m512i& ah = NS == 2 ? acc2[r * NZ + z] : acc[r * NZ + z];
          acc[r * NZ + z] = _mm512_dpbusd_epi32(acc[r * NZ + z], lo[z], xa);
          ah = _mm512_dpbusd_epi32(ah, hi[z], xb);
        }
      }
    }
    for (int z = 0; z < NZ; ++z) {
      const uint8_t* sa = wb[2 * z] + go + gs * 4;
      const uint8_t* sb = wb[2 * z + 1] + go + gs * 4;
      const bool pair = 2 * z + 1 < NB;
      const __m512 s = _mm512_castsi512_ps(load_pair(sa, sb, pair));
      const __m512 zs = _mm512_castsi512_ps(load_pair(sa + 32, sb + 32, pair));
      for (int r = 0; r < MR; ++r) {
        __m512i a = acc[r * NZ + z];
        if constexpr (kSplit) a = _mm512_add_epi32(a, acc2[r * NZ + z]);
        const float as = p.a_scale[(r0 + r) * p.ldas + g], ac = p.a_corr[(r0 + r) * p.ldas + g];
        const __m512 t = _mm512_mul_ps(s, _mm512_set1_ps(as));
        const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), t, y[r][z]);
        y[r][z] = _mm512_fnmadd_ps(zs, _mm512_set1_ps(ac), v);
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (nb + b) * NR;
    const int64_t cols = std::min<int64_t>(NR, p.n - n0);
    const __m256 bias = load_bias8(p, n0, cols);
    for (int r = 0; r < MR; ++r) {
      const __m512 yz = y[r][b / 2];
      const __m256 v = b % 2 ? _mm512_extractf32x8_ps(yz, 1) : _mm512_castps512_ps256(yz);
      store8(p, r0 + r, n0, cols, _mm256_add_ps(v, bias));
    }
  }
}

// Blocks [c0, c1) for rows [r0, r0 + MR), in tiles of NB blocks and one tile for the rest.
template <int MR, int NB, bool kSplit, bool kPrefetch>
void cols_vnni(const Int4GemmParams& p, int64_t c0, int64_t c1, int64_t r0) {
  int64_t nb = c0;
  for (; nb + NB <= c1; nb += NB) tile_vnni<MR, NB, kSplit, kPrefetch>(p, nb, r0);
  switch (c1 - nb) {
    case 7: if constexpr (NB > 7) tile_vnni<MR, 7, kSplit, kPrefetch>(p, nb, r0); break;
    case 6: if constexpr (NB > 6) tile_vnni<MR, 6, kSplit, kPrefetch>(p, nb, r0); break;
    case 5: if constexpr (NB > 5) tile_vnni<MR, 5, kSplit, kPrefetch>(p, nb, r0); break;
    case 4: if constexpr (NB > 4) tile_vnni<MR, 4, kSplit, kPrefetch>(p, nb, r0); break;
    case 3: if constexpr (NB > 3) tile_vnni<MR, 3, kSplit, kPrefetch>(p, nb, r0); break;
    case 2: if constexpr (NB > 2) tile_vnni<MR, 2, kSplit, kPrefetch>(p, nb, r0); break;
    case 1: tile_vnni<MR, 1, kSplit, kPrefetch>(p, nb, r0); break;
    default: break;
  }
}

// Row tiles of 4 x 6 blocks (48 columns: 12 int32 and 12 fp32 accumulators, 6 unpacked weight
// vectors), the last one 1..3 rows. Against 6 x 32, 4 x 32 and 8 x 32 (one thread, 4096x4096, Zen 4):
// the fastest at M = 16 and 64, level at M = 8.
constexpr int kMR = 4;
constexpr int kNB = 6;

void rows_vnni(const Int4GemmParams& p, int64_t c0, int64_t c1, int64_t r0, int64_t rows) {
  switch (rows) {
    case 4: cols_vnni<4, kNB, false, false>(p, c0, c1, r0); break;
    case 3: cols_vnni<3, kNB, false, false>(p, c0, c1, r0); break;
    case 2: cols_vnni<2, kNB, true, false>(p, c0, c1, r0); break;
    default: cols_vnni<1, kNB, true, false>(p, c0, c1, r0); break;
  }
}

void gemm_vnni(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  if (p.m == 1) {
    // Weight streaming: 8 blocks (64 columns, 8 independent runs of memory) per pass.
    cols_vnni<1, 8, true, true>(p, nb_begin, nb_end, 0);
    return;
  }
  // Column chunks of one tile width: their weights (kNB * K_pad / 2 bytes plus scales, 108 KiB at
  // K = 4096) stay in L2 while every row tile of the batch passes over them.
  for (int64_t c0 = nb_begin; c0 < nb_end; c0 += kNB) {
    const int64_t c1 = std::min(nb_end, c0 + kNB);
    for (int64_t r = 0; r < p.m; r += kMR) rows_vnni(p, c0, c1, r, std::min<int64_t>(kMR, p.m - r));
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(int4_gemm)(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  gemm_vnni(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
