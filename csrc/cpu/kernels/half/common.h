// What every level's half_linear kernel shares (torch-free, no intrinsics).
#pragma once
#include <cstdint>
#include <cstring>

namespace compressops::cpu::kernels::half_detail {

// float16 bits -> float32, exact for every value (subnormals, infinities, NaN payloads), the same
// value as F16C's vcvtph2ps. Portable, for the scalar level and the K tails of vector levels.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // subnormal or zero: exact
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace compressops::cpu::kernels::half_detail
