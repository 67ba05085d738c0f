// bfloat16 <-> float32 in plain C++, for the kernels' scalar paths and tails. Internal linkage, so
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
