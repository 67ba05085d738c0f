// bfloat16 <-> float32 for the kernels: plain C++ for scalar paths and tails, 8 lanes at a time from AVX2 on. Internal linkage, so
// each level's object keeps its own copy compiled with its own flags.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace compressops::cpu::kernels {
namespace {

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN to a quiet NaN: the same bits as c10::BFloat16(float).
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace
}  // namespace compressops::cpu::kernels

#if COMPRESSOPS_ISA_LEVEL >= COMPRESSOPS_LEVEL_AVX2
#include "simd.h"

namespace compressops::cpu::kernels {
namespace {

// 8 bf16 -> 8 floats (exact: a bf16 is the top half of a float).
inline __m256 bf16x8_to_f32(const uint16_t* h) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// 8 floats -> 8 bf16, round to nearest even, NaN -> 0x7fc0 (matches f32_to_bf16).
inline __m128i f32x8_to_bf16(__m256 f) {
  const __m256i bits = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  r = _mm256_srli_epi32(r, 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

}  // namespace
}  // namespace compressops::cpu::kernels
#endif
