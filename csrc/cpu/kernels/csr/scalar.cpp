// CSR sparse linear kernel at the scalar level: each output is a plain dot product over its row's
// nonzeros.
#include "../kernel_macros.h"
#include "common.h"

namespace compressops::cpu::kernels {

bool COMPRESSOPS_KERNEL(csr_spmm)(const CsrParams& p, int64_t n_begin, int64_t n_end) {
  return for_each_output(p, n_begin, n_end, [&](const float* x, int64_t j0, int64_t j1, bool check, bool* bad) {
    return dot_scalar(p, x, j0, j1, check, bad);
  });
}

}  // namespace compressops::cpu::kernels
