// 2:4 sparse linear kernels at the scalar level: each output is a plain dot product over its row's
// kept values, for float and int8 values alike.
#include "../kernel_macros.h"
#include "common.h"

namespace compressops::cpu::kernels {

bool COMPRESSOPS_KERNEL(sparse24_f)(const Sparse24Params& p, int64_t n_begin, int64_t n_end) {
  for_each_output(p, n_begin, n_end, [&](const void* vrow, const uint8_t* mrow, int64_t m) {
    return dot_groups(p, vrow, mrow, p.x + m * p.ldx, 0, p.kp / 4);
  });
  return true;
}

bool COMPRESSOPS_KERNEL(sparse24_i8)(const Sparse24Int8Params& p, int64_t n_begin, int64_t n_end) {
  for_each_output(p, n_begin, n_end, [&](const int8_t* vrow, const uint8_t* mrow, int64_t m) {
    return idot_groups(p, vrow, mrow, p.q + m * p.ldq, 0, p.kp / 4);
  });
  return true;
}

}  // namespace compressops::cpu::kernels
