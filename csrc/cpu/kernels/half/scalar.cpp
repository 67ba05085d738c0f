// half_linear at the scalar level: each output summed in k order, multiply then add (kernel
// objects build with -ffp-contract=off). The correctness baseline; vector levels are the fast ones.
#include <vector>

#include "../kernel_macros.h"
#include "common.h"
#include "kernel.h"

namespace compressops::cpu::kernels {

bool COMPRESSOPS_KERNEL(half_linear)(const HalfLinearParams& p, int64_t n_begin, int64_t n_end) {
  // One weight row converted to float32 at a time, then used by every input row.
  std::vector<float> w(static_cast<size_t>(n_begin < n_end ? p.k : 0));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint16_t* src = p.w + n * p.k;
    for (int64_t kk = 0; kk < p.k; ++kk) w[kk] = half_detail::half_to_float(src[kk]);
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.ldx;
      float acc = 0.0f;
      for (int64_t kk = 0; kk < p.k; ++kk) acc += x[kk] * w[kk];
      p.out[m * p.ldo + n] = p.bias ? acc + p.bias[n] : acc;
    }
  }
  return true;
}

}  // namespace compressops::cpu::kernels
