// Embedding gathers at the avx2 level: 8 values a vector, the scalar level's arithmetic (one float32
// product for int8; float(code) - z, then * s for int4; kernel objects build with -ffp-contract=off),
// so the results stay bit-identical to the reference. The packed int8 gather (4 values every 64
// bytes) stays scalar: it is bound by the cache lines it touches, not by arithmetic.
#include "../kernel_macros.h"
#include "../simd.h"
#include "kernel.h"

namespace compressops::cpu::kernels {
namespace {

int64_t row_of(const EmbeddingParams& p, int64_t t) { return p.idx64 ? p.idx64[t] : p.idx32[t]; }

// 8 consecutive bytes as 8 int32 lanes (an unaligned 64-bit load).
__m128i load8(const void* p) { return _mm_loadl_epi64(static_cast<const __m128i*>(p)); }

}  // namespace

bool COMPRESSOPS_KERNEL(int8_embedding_rows)(const EmbeddingParams& p, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t r = row_of(p, t);
    const int8_t* w = p.w8 + r * p.d;
    const float s = p.scale[r];
    const __m256 vs = _mm256_set1_ps(s);
    float* out = p.out + t * p.d;
    int64_t i = 0;
    for (; i + 8 <= p.d; i += 8) {
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8(w + i))), vs));
    }
    for (; i < p.d; ++i) out[i] = static_cast<float>(w[i]) * s;
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int4_embedding_rows)(const EmbeddingParams& p, int64_t begin, int64_t end) {
  const int64_t half = p.groups * p.group_size / 2;
  const __m256i low4 = _mm256_set1_epi32(15);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t r = row_of(p, t);
    const uint8_t* q = p.q4 + r * half;
    const float* s = p.scale + r * p.groups;
    float* out = p.out + t * p.d;
    for (int64_t g = 0; g < p.groups; ++g) {
      const float z = p.zeros ? static_cast<float>(p.zeros[r * p.groups + g]) : 8.0f;
      const float sg = s[g];
      const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(sg);
      const int64_t d0 = g * p.group_size;
      const int64_t n = (p.d - d0 < p.group_size ? p.d - d0 : p.group_size);  // the last group may be cut
      const uint8_t* qg = q + d0 / 2;
      int64_t i = 0;
      for (; i + 16 <= n; i += 16) {  // 8 bytes: 16 codes, low nibble first
        const __m256i b = _mm256_cvtepu8_epi32(load8(qg + i / 2));
        const __m256i lo = _mm256_and_si256(b, low4), hi = _mm256_srli_epi32(b, 4);
        const __m256i a = _mm256_unpacklo_epi32(lo, hi), c = _mm256_unpackhi_epi32(lo, hi);
        const __m256i first = _mm256_permute2x128_si256(a, c, 0x20), second = _mm256_permute2x128_si256(a, c, 0x31);
        _mm256_storeu_ps(out + d0 + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(first), vz), vs));
        _mm256_storeu_ps(out + d0 + i + 8, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(second), vz), vs));
      }
      for (; i < n; ++i) {
        const uint8_t b = qg[i / 2];
        out[d0 + i] = (static_cast<float>((i & 1) ? (b >> 4) : (b & 15)) - z) * sg;
      }
    }
  }
  return true;
}

}  // namespace compressops::cpu::kernels
