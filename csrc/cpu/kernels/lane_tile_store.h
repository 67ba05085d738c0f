// Writing a block of results computed [output row][batch lane] into out[batch row][output column].
// The transposed sparse kernels accumulate across the batch for one output row at a time; storing
// each result straight to out would be one store per lane at a stride of N floats. This writes a
// batch row at a time instead, so the stores into out are contiguous.
#pragma once
#include <cstdint>

namespace compressops::cpu::kernels {
// Internal linkage: each level file compiles its own copy with its own flags, and the linker must
// not hand one level's kernels another level's copy.
namespace {

// out[(lane0 + l) * ldo + n0 + r] = acc[r][l] (+ bias[n0 + r]) for r < rows, l < lanes.
inline void store_lane_tile(const float (*acc)[64], int64_t rows, int64_t lanes, int64_t lane0, int64_t n0,
                            const float* bias, float* out, int64_t ldo) {
  for (int64_t l = 0; l < lanes; ++l) {
    float* o = out + (lane0 + l) * ldo + n0;
    if (bias) {
      for (int64_t r = 0; r < rows; ++r) o[r] = acc[r][l] + bias[n0 + r];
    } else {
      for (int64_t r = 0; r < rows; ++r) o[r] = acc[r][l];
    }
  }
}

}  // namespace
}  // namespace compressops::cpu::kernels
