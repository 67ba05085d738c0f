// int4 (W4A8) linear kernels at the AVX2 level. The avx512 level runs these (the family has no
// avx512 file), and the avx512_vnni level its quantization kernel.
#include "../kernel_macros.h"
#include "../simd.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

inline __m256 load8_x(const void* x, Int4FloatKind kind, int64_t i) {
  if (kind == Int4FloatKind::kF32) return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  return bf16x8_to_f32(static_cast<const uint16_t*>(x) + i);
}


inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// A whole group of real columns (k1 - k0 == group_size, a multiple of 32), 8 lanes at a time.
void quantize_group_avx2(const Int4QuantizeParams& p, const void* x, int8_t* q, int64_t k0, float* scale_out,
                         float* corr_out) {
  const int64_t k1 = k0 + p.group_size;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 fmax = _mm256_set1_ps(std::numeric_limits<float>::max());
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (int64_t i = k0; i < k1; i += 8) {
    const __m256 a = _mm256_and_ps(load8_x(x, p.x_kind, i), abs_mask);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  const float amax = _mm_cvtss_f32(m4);
  float scale = 0.0f, inv = 0.0f;
  if (!group_scale(amax, _mm256_movemask_ps(bad) != 0, &scale, &inv)) {
    std::memset(q + k0, 0, p.group_size);
    *scale_out = scale;
    *corr_out = scale == scale ? 0.0f : scale;
    return;
  }
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  auto quant8 = [&](int64_t i) {
    __m256 v = _mm256_mul_ps(load8_x(x, p.x_kind, i), vinv);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    return _mm256_cvtps_epi32(v);
  };
  const __m256i fix_lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t i = k0; i < k1; i += 32) {
    const __m256i a = quant8(i), b = quant8(i + 8), c = quant8(i + 16), d = quant8(i + 24);
    sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
    const __m256i ab = _mm256_packs_epi32(a, b);
    const __m256i cd = _mm256_packs_epi32(c, d);
    const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), fix_lanes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), packed);
  }
  *scale_out = scale;
  *corr_out = scale * static_cast<float>(hsum_epi32(sum));
}

inline void store8(const Int4GemmParams& p, int64_t m, int64_t n0, __m256 v) {
  if (n0 + NR > p.n) {
    alignas(32) float tmp[NR];
    _mm256_store_ps(tmp, v);
    for (int64_t c = 0; c < p.n - n0; ++c) store_out(p, m, n0 + c, tmp[c]);
    return;
  }
  if (p.out_kind == Int4FloatKind::kF32) {
    _mm256_storeu_ps(static_cast<float*>(p.out) + m * p.ldo + n0, v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p.out) + m * p.ldo + n0), f32x8_to_bf16(v));
  }
}

inline __m256i bcast4(const int8_t* ptr) {
  int32_t v;
  std::memcpy(&v, ptr, 4);
  return _mm256_set1_epi32(v);
}

// MR rows x NB column blocks starting at block nb, rows [r0, r0 + MR). Per group: the int8
// products go through vpmaddubsw (u8 weight nibbles x s8 activations -> int16 pairs, at most
// 2 * 15 * 127 = 3810), are summed in int16 over 4 chunks (<= 30480, no saturation), widened
// with vpmaddwd(ones) and summed in int32; then y += float(acc) * (s * a_scale) - zs * a_corr.
template <int MR, int NB>
void tile_avx2(const Int4GemmParams& p, int64_t nb, int64_t r0) {
  const int64_t gs = p.group_size;
  const int64_t gstride = int4_group_stride(gs);
  const int64_t bstride = gstride * p.groups;
  const __m256i mask = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  // fp32 accumulators live in L1 (touched once per group), leaving the registers to the int8 loop.
  alignas(32) float y[MR][NB][NR] = {};
  const uint8_t* wb[NB];
  for (int b = 0; b < NB; ++b) wb[b] = p.w + (nb + b) * bstride;
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = p.a + (r0 + r) * p.lda;

  for (int64_t g = 0; g < p.groups; ++g) {
    // int32 group sums, also in L1 (updated once per 32 k)
    alignas(32) int32_t acc[MR][NB][NR] = {};
    const int64_t kg = g * gs;
    for (int64_t j = 0; j < gs / 8; j += 4) {  // 4 chunks of 8 k = 32 k per step
      __m256i s16[MR][NB];
      for (int r = 0; r < MR; ++r)
        for (int b = 0; b < NB; ++b) s16[r][b] = _mm256_setzero_si256();
      for (int jj = 0; jj < 4; ++jj) {
        __m256i lo[NB], hi[NB];
        for (int b = 0; b < NB; ++b) {
          const uint8_t* src = wb[b] + g * gstride + (j + jj) * 32;
          if (MR == 1) _mm_prefetch(reinterpret_cast<const char*>(src) + 1024, _MM_HINT_T0);
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
          lo[b] = _mm256_and_si256(v, mask);
          hi[b] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
        }
        for (int r = 0; r < MR; ++r) {
          const int8_t* xp = xr[r] + kg + (j + jj) * 8;
          const __m256i xa = bcast4(xp), xb = bcast4(xp + 4);
          for (int b = 0; b < NB; ++b) {
            s16[r][b] = _mm256_add_epi16(
                s16[r][b], _mm256_add_epi16(_mm256_maddubs_epi16(lo[b], xa), _mm256_maddubs_epi16(hi[b], xb)));
            // An empty asm keeps GCC's reassociation from hoisting every product of the unrolled
            // chunk loop ahead of the adds (which spilled them all to the stack).
            asm("" : "+x"(s16[r][b]));
          }
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int b = 0; b < NB; ++b) {
          __m256i* a = reinterpret_cast<__m256i*>(acc[r][b]);
          _mm256_store_si256(a, _mm256_add_epi32(_mm256_load_si256(a), _mm256_madd_epi16(s16[r][b], ones)));
        }
    }
    for (int b = 0; b < NB; ++b) {
      const float* sc = reinterpret_cast<const float*>(wb[b] + g * gstride + gs * 4);
      const __m256 s = _mm256_loadu_ps(sc), zs = _mm256_loadu_ps(sc + NR);
      for (int r = 0; r < MR; ++r) {
        const float* as = p.a_scale + (r0 + r) * p.ldas + g;
        const float* ac = p.a_corr + (r0 + r) * p.ldas + g;
        const __m256 t = _mm256_mul_ps(s, _mm256_set1_ps(*as));
        const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc[r][b]));
        const __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), t, _mm256_load_ps(y[r][b]));
        _mm256_store_ps(y[r][b], _mm256_fnmadd_ps(zs, _mm256_set1_ps(*ac), v));
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (nb + b) * NR;
    __m256 bias = _mm256_setzero_ps();
    if (p.bias) {
      if (n0 + NR <= p.n) {
        bias = _mm256_loadu_ps(p.bias + n0);
      } else {
        alignas(32) float tmp[NR] = {};
        for (int64_t c = 0; c < p.n - n0; ++c) tmp[c] = p.bias[n0 + c];
        bias = _mm256_load_ps(tmp);
      }
    }
    for (int r = 0; r < MR; ++r) store8(p, r0 + r, n0, _mm256_add_ps(_mm256_load_ps(y[r][b]), bias));
  }
}

template <int MR>
void rows_avx2(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end, int64_t r0) {
  // One row: four blocks share each activation broadcast. Several rows: 4 x 2 register tiles.
  constexpr int NB = MR == 1 ? 4 : 2;
  int64_t nb = nb_begin;
  for (; nb + NB <= nb_end; nb += NB) tile_avx2<MR, NB>(p, nb, r0);
  for (; nb < nb_end; ++nb) tile_avx2<MR, 1>(p, nb, r0);
}

void gemm_avx2(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  // Column chunks of a few blocks: their weights (chunk * 4 * K_pad bytes) stay in L2 while every
  // row tile of the batch passes over them.
  const int64_t chunk = 4;
  for (int64_t c0 = nb_begin; c0 < nb_end; c0 += chunk) {
    const int64_t c1 = std::min(nb_end, c0 + chunk);
    int64_t r = 0;
    if (p.m == 1) {
      rows_avx2<1>(p, c0, c1, 0);
      continue;
    }
    for (; r + 4 <= p.m; r += 4) rows_avx2<4>(p, c0, c1, r);
    switch (p.m - r) {
      case 3: rows_avx2<3>(p, c0, c1, r); break;
      case 2: rows_avx2<2>(p, c0, c1, r); break;
      case 1: rows_avx2<1>(p, c0, c1, r); break;
      default: break;
    }
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(int4_quantize_rows)(const Int4QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  quantize_rows<quantize_group_avx2>(p, row_begin, row_end);
  return true;
}

bool COMPRESSOPS_KERNEL(int4_gemm)(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  gemm_avx2(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
