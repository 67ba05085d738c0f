// Binary kernels at the scalar level: __builtin_popcountll per word. This object is built without
// -mpopcnt, so GCC calls libgcc's __popcountdi2: correct, slow.
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

struct ScalarLevel {
  template <int OCB>
  static void count(const TapRow* rows, int nrows, const uint64_t* const* wbase, int64_t* tot) {
    for (int r = 0; r < nrows; ++r) {
      const uint64_t* x = rows[r].x;
      const int64_t off = rows[r].w_off, len = rows[r].len;
      for (int64_t i = 0; i < len; ++i) {
        for (int o = 0; o < OCB; ++o) tot[o] += __builtin_popcountll(x[i] ^ wbase[o][off + i]);
      }
    }
  }
  static uint64_t sign_word(const float* v, int64_t n) { return sign_bits(v, 0, n); }
};

}  // namespace

bool COMPRESSOPS_KERNEL(binary_pack_rows)(const BinaryPackParams& p, int64_t begin, int64_t end) {
  return pack_rows<ScalarLevel>(p, begin, end);
}

bool COMPRESSOPS_KERNEL(binary_pack_planes)(const BinaryPackPlanesParams& p, int64_t begin, int64_t end) {
  pack_planes_pixels(p, begin, end);
  return true;
}

bool COMPRESSOPS_KERNEL(binary_conv_rows)(const BinaryConvParams& p, int64_t begin, int64_t end) {
  return conv_rows<ScalarLevel>(p, begin, end);
}

uint64_t COMPRESSOPS_KERNEL(binary_xor_popcount_peak)(int64_t iters, uint64_t seed) {
  return xor_popcount_peak<ScalarLevel>(iters, seed);
}

}  // namespace compressops::cpu::kernels
