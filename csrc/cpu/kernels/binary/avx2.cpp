// Binary kernels at the avx2 level: XOR + nibble-table popcount with vpshufb, byte counters
// widened with vpsadbw before they can overflow; vector sign packing.
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

inline __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline int64_t hsum_epi64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

struct Avx2Level {
  template <int OCB>
  static void count(const TapRow* rows, int nrows, const uint64_t* const* wbase, int64_t* tot) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc8[OCB], acc64[OCB];
    for (int o = 0; o < OCB; ++o) acc8[o] = acc64[o] = zero;
    // Byte counters gain at most 8 per 256-bit chunk: widen them (vpsadbw) every 31 chunks, across
    // tap rows, so a 3x3 conv widens once per output pixel rather than once per row.
    int pending = 0;
    for (int r = 0; r < nrows; ++r) {
      const uint64_t* x = rows[r].x;
      const int64_t off = rows[r].w_off, len = rows[r].len;
      int64_t i = 0;
      for (; i + 4 <= len; i += 4) {
        if (pending == 31) {
          for (int o = 0; o < OCB; ++o) {
            acc64[o] = _mm256_add_epi64(acc64[o], _mm256_sad_epu8(acc8[o], zero));
            acc8[o] = zero;
          }
          pending = 0;
        }
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
        for (int o = 0; o < OCB; ++o) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wbase[o] + off + i));
          acc8[o] = _mm256_add_epi8(acc8[o], popcount_bytes(_mm256_xor_si256(xv, wv), lut, low));
        }
        ++pending;
      }
      if (i < len) {
        // The last 1-3 words of the row (C = 64 gives 3-word rows for a 3-wide kernel): masked
        // loads zero the lanes past the row in both operands, so their XOR counts nothing.
        if (pending == 31) {
          for (int o = 0; o < OCB; ++o) {
            acc64[o] = _mm256_add_epi64(acc64[o], _mm256_sad_epu8(acc8[o], zero));
            acc8[o] = zero;
          }
          pending = 0;
        }
        const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(len - i), _mm256_setr_epi64x(0, 1, 2, 3));
        const __m256i xv = _mm256_maskload_epi64(reinterpret_cast<const long long*>(x + i), mask);
        for (int o = 0; o < OCB; ++o) {
          const __m256i wv = _mm256_maskload_epi64(reinterpret_cast<const long long*>(wbase[o] + off + i), mask);
          acc8[o] = _mm256_add_epi8(acc8[o], popcount_bytes(_mm256_xor_si256(xv, wv), lut, low));
        }
        ++pending;
      }
    }
    for (int o = 0; o < OCB; ++o) acc64[o] = _mm256_add_epi64(acc64[o], _mm256_sad_epu8(acc8[o], zero));
    if constexpr (OCB % 4 == 0) {
      // Transpose-add four channels' 4 x u64 partial sums into one vector of four totals.
      for (int g = 0; g < OCB; g += 4) {
        const __m256i u01 = _mm256_add_epi64(_mm256_unpacklo_epi64(acc64[g], acc64[g + 1]),
                                             _mm256_unpackhi_epi64(acc64[g], acc64[g + 1]));
        const __m256i u23 = _mm256_add_epi64(_mm256_unpacklo_epi64(acc64[g + 2], acc64[g + 3]),
                                             _mm256_unpackhi_epi64(acc64[g + 2], acc64[g + 3]));
        const __m256i v = _mm256_add_epi64(_mm256_permute2x128_si256(u01, u23, 0x20),
                                           _mm256_permute2x128_si256(u01, u23, 0x31));
        alignas(32) int64_t four[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(four), v);
        for (int q = 0; q < 4; ++q) tot[g + q] += four[q];
      }
    } else {
      for (int o = 0; o < OCB; ++o) tot[o] += hsum_epi64(acc64[o]);
    }
  }
  static uint64_t sign_word(const float* v, int64_t n) { return sign_word_avx2(v, n); }
};

}  // namespace

bool COMPRESSOPS_KERNEL(binary_pack_rows)(const BinaryPackParams& p, int64_t begin, int64_t end) {
  return pack_rows<Avx2Level>(p, begin, end);
}

bool COMPRESSOPS_KERNEL(binary_pack_planes)(const BinaryPackPlanesParams& p, int64_t begin, int64_t end) {
  int64_t px = begin;
  // 8 pixels at a time: channel j of the word sets bit j of 8 pixel words (two vectors of 4 x u64).
  const __m256 zero = _mm256_setzero_ps();
  for (; px + 8 <= end; px += 8) {
    for (int64_t wi = 0; wi < p.cw; ++wi) {
      const int64_t base = wi * 64;
      const int64_t nbits = std::min<int64_t>(64, p.c - base);
      __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
      for (int64_t j = 0; j < nbits; ++j) {
        const __m256 v = _mm256_loadu_ps(p.x + (base + j) * p.ldc + px);
        // all-ones lanes where v >= 0, widened to 64 bits, keep bit j
        const __m256i m = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
        const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(uint64_t{1} << j));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)), bit));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)), bit));
      }
      alignas(32) uint64_t words[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(words), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(words + 4), hi);
      for (int q = 0; q < 8; ++q) p.out[(px + q) * p.cw + wi] = words[q];
    }
  }
  pack_planes_pixels(p, px, end);
  return true;
}

bool COMPRESSOPS_KERNEL(binary_conv_rows)(const BinaryConvParams& p, int64_t begin, int64_t end) {
  return conv_rows<Avx2Level>(p, begin, end);
}

uint64_t COMPRESSOPS_KERNEL(binary_xor_popcount_peak)(int64_t iters, uint64_t seed) {
  return xor_popcount_peak<Avx2Level>(iters, seed);
}

}  // namespace compressops::cpu::kernels
