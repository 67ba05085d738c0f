// Binary (XNOR-popcount) convolution kernels, compiled once per ISA level (see kernel_macros.h).
//
// Levels implemented here: scalar (__builtin_popcountll; this object is built without -mpopcnt,
// so GCC calls libgcc's __popcountdi2: correct, slow), avx2 (XOR + nibble-table popcount with
// vpshufb, byte counters widened with vpsadbw before they can overflow) and avx512_vnni (XOR +
// vpopcntq on 512-bit words, 64-bit counters that never need widening; the avx512_vnni level is
// the first that guarantees VPOPCNTDQ). The avx512 object compiles this file to nothing and the
// host's fallback chain sends it to avx2; amx falls to avx512_vnni.
//
// Every integer count is exact and the float epilogue is a separate multiply and add (these
// files build with -ffp-contract=off), so each level returns the same bits as
// compressops.reference.binary_conv2d.
#include "kernel_macros.h"

#if COMPRESSOPS_ISA_LEVEL == COMPRESSOPS_LEVEL_SCALAR || COMPRESSOPS_ISA_LEVEL == COMPRESSOPS_LEVEL_AVX2 || \
    COMPRESSOPS_ISA_LEVEL == COMPRESSOPS_LEVEL_AVX512_VNNI

#include <algorithm>
#include <cstdint>

#include "binary_conv_kernel.h"

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
#include "simd.h"
#endif

namespace compressops::cpu::kernels {
namespace {

// Output channels computed together (each loaded activation vector is reused OCB times).
constexpr int kOCB = 8;
static_assert(kOCB == kBinaryPeakChannels, "the peak loop must mirror the conv's channel blocking");
// Output channels whose weights stay in L1 while one output row is swept (64 * 9 taps * 32 B =
// 18 KiB for a 3x3 conv with 256 input channels).
constexpr int64_t kOcChunk = 64;

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
inline __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline int64_t hsum_epi64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}
#endif

// One valid row of kernel taps for one output pixel: words [x, x + len) against the weight words
// starting at w_off inside each output channel's [kh, kw, cw] block.
struct TapRow {
  const uint64_t* x;
  int64_t w_off;
  int64_t len;
};

// Writes channel o's value to out[o - out_base] for o in [o0, o0 + OCB).
template <int OCB>
inline void conv_block(const BinaryConvParams& p, const TapRow* rows, int nrows, int64_t valid, int64_t o0,
                       float* out, int64_t out_base) {
  const int64_t wstride = p.kh * p.kw * p.cw;
  int64_t tot[OCB] = {};
  const uint64_t* wbase[OCB];
  for (int o = 0; o < OCB; ++o) wbase[o] = p.w + (o0 + o) * wstride;
#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX512_VNNI
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
#elif COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
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
#else
  for (int r = 0; r < nrows; ++r) {
    const uint64_t* x = rows[r].x;
    const int64_t off = rows[r].w_off, len = rows[r].len;
    for (int64_t i = 0; i < len; ++i) {
      for (int o = 0; o < OCB; ++o) tot[o] += __builtin_popcountll(x[i] ^ wbase[o][off + i]);
    }
  }
#endif
  const int64_t all = p.c * valid;
  for (int o = 0; o < OCB; ++o) {
    float v = p.alpha[o0 + o] * static_cast<float>(all - 2 * tot[o]);
    if (p.bias) v = v + p.bias[o0 + o];
    if (p.has_min) v = std::max(v, p.cmin);
    if (p.has_max) v = std::min(v, p.cmax);
    out[o0 + o - out_base] = v;
  }
}

}  // namespace

// Bit packing is memory-bound: it has scalar and avx2 kernels, and the levels above fall back to avx2.
#if COMPRESSOPS_ISA_LEVEL <= COMPRESSOPS_LEVEL_AVX2
bool COMPRESSOPS_KERNEL(binary_pack_rows)(const BinaryPackParams& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = p.x + r * p.ldx;
    uint64_t* o = p.out + r * p.cw;
    for (int64_t wi = 0; wi < p.cw; ++wi) {
      const int64_t base = wi * 64;
      const int64_t nbits = std::min<int64_t>(64, p.c - base);
      uint64_t word = 0;
      int64_t j = 0;
#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
      const __m256 zero = _mm256_setzero_ps();
      for (; j + 8 <= nbits; j += 8) {
        const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(xr + base + j), zero, _CMP_GE_OQ);
        word |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(ge))) << j;
      }
#endif
      for (; j < nbits; ++j) {
        if (xr[base + j] >= 0.0f) word |= uint64_t{1} << j;
      }
      o[wi] = word;
    }
  }
  return true;
}

bool COMPRESSOPS_KERNEL(binary_pack_planes)(const BinaryPackPlanesParams& p, int64_t begin, int64_t end) {
  int64_t px = begin;
#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
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
#endif
  for (; px < end; ++px) {
    for (int64_t wi = 0; wi < p.cw; ++wi) {
      const int64_t base = wi * 64;
      const int64_t nbits = std::min<int64_t>(64, p.c - base);
      uint64_t word = 0;
      for (int64_t j = 0; j < nbits; ++j) {
        if (p.x[(base + j) * p.ldc + px] >= 0.0f) word |= uint64_t{1} << j;
      }
      p.out[px * p.cw + wi] = word;
    }
  }
  return true;
}
#endif

bool COMPRESSOPS_KERNEL(binary_conv_rows)(const BinaryConvParams& p, int64_t begin, int64_t end) {
  if (p.out_bits && (p.oc_begin % 64 != 0 || kOcChunk != 64)) return false;
  if (begin >= end) return true;
  // Kernel heights beyond this would need a bigger tap-row table; the host rejects them.
  constexpr int kMaxKh = 64;
  if (p.kh > kMaxKh) return false;
  TapRow rows[kMaxKh];
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / p.oh, oh = row % p.oh;
    const int64_t ih0 = oh * p.sh - p.ph;
    float* out_row = p.out + row * p.ow * p.oc;
    for (int64_t c0 = p.oc_begin; c0 < p.oc_end; c0 += kOcChunk) {
      const int64_t c1 = std::min(p.oc_end, c0 + kOcChunk);
      for (int64_t ow = 0; ow < p.ow; ++ow) {
        const int64_t iw0 = ow * p.sw - p.pw;
        const int64_t kw_lo = std::max<int64_t>(0, -iw0), kw_hi = std::min<int64_t>(p.kw, p.w_in - iw0);
        int nrows = 0;
        int64_t valid = 0;
        if (kw_hi > kw_lo) {
          for (int64_t ki = 0; ki < p.kh; ++ki) {
            const int64_t ih = ih0 + ki;
            if (ih < 0 || ih >= p.h) continue;
            rows[nrows].x = p.x + ((n * p.h + ih) * p.w_in + iw0 + kw_lo) * p.cw;
            rows[nrows].w_off = (ki * p.kw + kw_lo) * p.cw;
            rows[nrows].len = (kw_hi - kw_lo) * p.cw;
            ++nrows;
            valid += kw_hi - kw_lo;
          }
        }
        // Packed output: this chunk's values go to a stack buffer and become one word.
        float chunk_vals[kOcChunk];
        float* dst = p.out_bits ? chunk_vals : out_row + ow * p.oc;
        const int64_t base = p.out_bits ? c0 : 0;
        int64_t o = c0;
        for (; o + kOCB <= c1; o += kOCB) conv_block<kOCB>(p, rows, nrows, valid, o, dst, base);
        for (; o < c1; ++o) conv_block<1>(p, rows, nrows, valid, o, dst, base);
        if (p.out_bits) {
          uint64_t word = 0;
          int64_t j = 0;
#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
          // Ordered compare: NaN gives 0, as the scalar rule (and binary_pack_activation) does.
          for (; j + 8 <= c1 - c0; j += 8) {
            const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(chunk_vals + j), _mm256_setzero_ps(), _CMP_GE_OQ);
            word |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(ge))) << j;
          }
#endif
          for (; j < c1 - c0; ++j) {
            if (chunk_vals[j] >= 0.0f) word |= uint64_t{1} << j;
          }
          p.out_bits[(row * p.ow + ow) * p.ocw + c0 / 64] = word;
        }
      }
    }
  }
  return true;
}

uint64_t COMPRESSOPS_KERNEL(binary_xor_popcount_peak)(int64_t iters, uint64_t seed) {
  alignas(64) uint64_t x[kBinaryPeakWords];
  alignas(64) uint64_t w[kBinaryPeakChannels * kBinaryPeakWords];
  // Any bits will do; a xorshift stream keeps the counts data-dependent.
  uint64_t s = seed | 1;
  auto next = [&s] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (auto& v : x) v = next();
  for (auto& v : w) v = next();
  const float ones[kBinaryPeakChannels] = {1, 1, 1, 1, 1, 1, 1, 1};
  BinaryConvParams p{};
  p.w = w;
  p.alpha = ones;
  p.c = kBinaryPeakWords * 64;
  p.cw = kBinaryPeakWords;
  p.kh = p.kw = 1;
  const TapRow row{x, 0, kBinaryPeakWords};
  float out[kBinaryPeakChannels];
  double total = 0;
  for (int64_t it = 0; it < iters; ++it) {
    // One changed word per pass, so no pass can be folded into another.
    x[it & (kBinaryPeakWords - 1)] ^= static_cast<uint64_t>(it);
    conv_block<kBinaryPeakChannels>(p, &row, 1, 1, 0, out, 0);
    total += out[it % kBinaryPeakChannels];
  }
  return static_cast<uint64_t>(total < 0 ? -total : total);
}

}  // namespace compressops::cpu::kernels

#endif
