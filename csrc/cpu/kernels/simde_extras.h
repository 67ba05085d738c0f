// The few AVX-512 intrinsics our kernels use that SIMDe 0.8.2 does not implement, for the
// emulated builds only (simd.h includes this after SIMDe). Each is defined from its Intel
// reference semantics with SIMDe's portable types, under the Intel name (a macro, so GCC's own
// target-specific declaration of the same name is never called from baseline code).
#pragma once
#include <cstdint>
#include <cstring>

namespace compressops::emulation {

// Sum of the eight 64-bit lanes (wrapping), as _mm512_reduce_add_epi64.
inline int64_t mm512_reduce_add_epi64(simde__m512i v) {
  int64_t lanes[8];
  simde_mm512_storeu_si512(lanes, v);
  uint64_t sum = 0;
  for (int64_t lane : lanes) sum += static_cast<uint64_t>(lane);
  return static_cast<int64_t>(sum);
}

// Sum of the sixteen 32-bit lanes (wrapping), as _mm512_reduce_add_epi32.
inline int32_t mm512_reduce_add_epi32(simde__m512i v) {
  int32_t lanes[16];
  simde_mm512_storeu_si512(lanes, v);
  uint32_t sum = 0;
  for (int32_t lane : lanes) sum += static_cast<uint32_t>(lane);
  return static_cast<int32_t>(sum);
}

// Zero-masked load of 64-bit lanes that reads only the selected lanes, as the hardware does (a
// masked-off element is never accessed, so it cannot fault); SIMDe 0.8.2 loads all 64 bytes and masks
// after, which reads past the end of a buffer (AddressSanitizer found it at a row's tail).
inline simde__m512i mm512_maskz_loadu_epi64(simde__mmask8 k, const void* p) {
  int64_t lanes[8] = {};
  const auto* src = static_cast<const unsigned char*>(p);
  for (int i = 0; i < 8; ++i) {
    if ((k >> i) & 1) std::memcpy(&lanes[i], src + 8 * i, sizeof(int64_t));
  }
  return simde_mm512_loadu_si512(lanes);
}

}  // namespace compressops::emulation

#undef _mm512_reduce_add_epi64
#define _mm512_reduce_add_epi64(v) ::compressops::emulation::mm512_reduce_add_epi64(v)
#undef _mm512_reduce_add_epi32
#define _mm512_reduce_add_epi32(v) ::compressops::emulation::mm512_reduce_add_epi32(v)
#undef _mm512_maskz_loadu_epi64
#define _mm512_maskz_loadu_epi64(k, p) ::compressops::emulation::mm512_maskz_loadu_epi64(k, p)
