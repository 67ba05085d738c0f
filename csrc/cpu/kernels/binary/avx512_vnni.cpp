// Binary conv kernels at the avx512_vnni level, the first level that guarantees VPOPCNTDQ: XOR +
// vpopcntq on 512-bit words, 64-bit counters that never need widening. Sign packing is common.h's
// AVX2 code; bit packing is memory-bound and has no kernel here (it falls to avx2).
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

struct Avx512VnniLevel {
  template <int OCB>
  static void count(const TapRow* rows, int nrows, const uint64_t* const* wbase, int64_t* tot) {
    __m512i acc[OCB];
    for (int o = 0; o < OCB; ++o) acc[o] = _mm512_setzero_si512();
    for (int r = 0; r < nrows; ++r) {
      const uint64_t* x = rows[r].x;
      const int64_t off = rows[r].w_off, len = rows[r].len;
      int64_t i = 0;
      for (; i + 8 <= len; i += 8) {
        const __m512i xv = _mm512_loadu_si512(x + i);
        for (int o = 0; o < OCB; ++o) {
          const __m512i wv = _mm512_loadu_si512(wbase[o] + off + i);
          acc[o] = _mm512_add_epi64(acc[o], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv)));
        }
      }
      if (i < len) {
        // Zero-masked loads: lanes past the row are 0 in both operands and count nothing.
        const __mmask8 m = static_cast<__mmask8>((1u << (len - i)) - 1);
        const __m512i xv = _mm512_maskz_loadu_epi64(m, x + i);
        for (int o = 0; o < OCB; ++o) {
          const __m512i wv = _mm512_maskz_loadu_epi64(m, wbase[o] + off + i);
          acc[o] = _mm512_add_epi64(acc[o], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv)));
        }
      }
    }
    for (int o = 0; o < OCB; ++o) tot[o] = _mm512_reduce_add_epi64(acc[o]);
  }
  static uint64_t sign_word(const float* v, int64_t n) { return sign_word_avx2(v, n); }
};

}  // namespace

bool COMPRESSOPS_KERNEL(binary_conv_rows)(const BinaryConvParams& p, int64_t begin, int64_t end) {
  return conv_rows<Avx512VnniLevel>(p, begin, end);
}

uint64_t COMPRESSOPS_KERNEL(binary_xor_popcount_peak)(int64_t iters, uint64_t seed) {
  return xor_popcount_peak<Avx512VnniLevel>(iters, seed);
}

}  // namespace compressops::cpu::kernels
