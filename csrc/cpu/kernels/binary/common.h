// What the binary (XNOR-popcount) level files share: the channel blocking, the conv's walk over
// output pixels and valid tap rows, the float epilogue, sign-bit packing, and the AVX2 sign packing
// the levels above AVX2 reuse. A level file supplies only its popcount loop and its sign packing,
// as a struct with
//   template <int OCB> static void count(const TapRow* rows, int nrows, const uint64_t* const* wbase,
//                                        int64_t* tot);  // tot[o] += popcount(x XOR w_o) over rows
//   static uint64_t sign_word(const float* v, int64_t n);  // bit j = (v[j] >= 0), j < n <= 64
// and instantiates the templates below with it.
//
// A kernel a level does not define (no file for the level, or no entry point in it) falls down the
// host's chain to the next level that has it.
//
// Every integer count is exact and the float epilogue is a separate multiply and add (kernel files
// build with -ffp-contract=off), so each level returns the same bits as
// compressops.reference.binary_conv2d.
//
// Everything here has internal linkage: each level file's copy is compiled with that level's
// flags, and one shared inline definition would let the linker keep a copy built for a level
// above its caller's.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../kernel_macros.h"
#include "kernel.h"

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
#include "../simd.h"
#endif

namespace compressops::cpu::kernels {
namespace {

// Output channels computed together (each loaded activation vector is reused OCB times).
constexpr int kOCB = 8;
static_assert(kOCB == kBinaryPeakChannels, "the peak loop must mirror the conv's channel blocking");
// Output channels whose weights stay in L1 while one output row is swept (64 * 9 taps * 32 B =
// 18 KiB for a 3x3 conv with 256 input channels).
constexpr int64_t kOcChunk = 64;

// One valid row of kernel taps for one output pixel: words [x, x + len) against the weight words
// starting at w_off inside each output channel's [kh, kw, cw] block.
struct TapRow {
  const uint64_t* x;
  int64_t w_off;
  int64_t len;
};

// Bits j in [from, n) of a sign word: 1 where v[j] >= 0 (NaN gives 0).
inline uint64_t sign_bits(const float* v, int64_t from, int64_t n) {
  uint64_t word = 0;
  for (int64_t j = from; j < n; ++j) {
    if (v[j] >= 0.0f) word |= uint64_t{1} << j;
  }
  return word;
}

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
// sign_word eight values at a time. Ordered compare: NaN gives 0, as the scalar rule (and
// binary_pack_activation) does.
inline uint64_t sign_word_avx2(const float* v, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  uint64_t word = 0;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(v + j), zero, _CMP_GE_OQ);
    word |= static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(ge))) << j;
  }
  return word | sign_bits(v, j, n);
}
#endif

// Writes channel o's value to out[o - out_base] for o in [o0, o0 + OCB).
template <class Level, int OCB>
inline void conv_block(const BinaryConvParams& p, const TapRow* rows, int nrows, int64_t valid, int64_t o0,
                       float* out, int64_t out_base) {
  const int64_t wstride = p.kh * p.kw * p.cw;
  int64_t tot[OCB] = {};
  const uint64_t* wbase[OCB];
  for (int o = 0; o < OCB; ++o) wbase[o] = p.w + (o0 + o) * wstride;
  Level::template count<OCB>(rows, nrows, wbase, tot);
  const int64_t all = p.c * valid;
  for (int o = 0; o < OCB; ++o) {
    float v = p.alpha[o0 + o] * static_cast<float>(all - 2 * tot[o]);
    if (p.bias) v = v + p.bias[o0 + o];
    if (p.has_min) v = std::max(v, p.cmin);
    if (p.has_max) v = std::min(v, p.cmax);
    out[o0 + o - out_base] = v;
  }
}

// binary_conv_rows at every level.
template <class Level>
inline bool conv_rows(const BinaryConvParams& p, int64_t begin, int64_t end) {
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
        for (; o + kOCB <= c1; o += kOCB) conv_block<Level, kOCB>(p, rows, nrows, valid, o, dst, base);
        for (; o < c1; ++o) conv_block<Level, 1>(p, rows, nrows, valid, o, dst, base);
        if (p.out_bits) p.out_bits[(row * p.ow + ow) * p.ocw + c0 / 64] = Level::sign_word(chunk_vals, c1 - c0);
      }
    }
  }
  return true;
}

// binary_xor_popcount_peak at every level: the conv's inner loop alone (see kernel.h).
template <class Level>
inline uint64_t xor_popcount_peak(int64_t iters, uint64_t seed) {
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
    conv_block<Level, kBinaryPeakChannels>(p, &row, 1, 1, 0, out, 0);
    total += out[it % kBinaryPeakChannels];
  }
  return static_cast<uint64_t>(total < 0 ? -total : total);
}

// binary_pack_rows at the levels that have it.
template <class Level>
inline bool pack_rows(const BinaryPackParams& p, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = p.x + r * p.ldx;
    uint64_t* o = p.out + r * p.cw;
    for (int64_t wi = 0; wi < p.cw; ++wi) {
      const int64_t base = wi * 64;
      o[wi] = Level::sign_word(xr + base, std::min<int64_t>(64, p.c - base));
    }
  }
  return true;
}

// binary_pack_planes one pixel at a time, for pixels [px, end): the scalar kernel, and the tail
// of the vector ones.
inline void pack_planes_pixels(const BinaryPackPlanesParams& p, int64_t px, int64_t end) {
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
}

}  // namespace
}  // namespace compressops::cpu::kernels
