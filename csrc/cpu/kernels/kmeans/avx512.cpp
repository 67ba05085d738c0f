// k-means assignment at the avx512 level: common.h's loop, at this level's vector width.
#include "../kernel_macros.h"
#include "common.h"

namespace compressops::cpu::kernels {

bool COMPRESSOPS_KERNEL(kmeans_assign_subspaces)(const KmeansAssignParams& p, int64_t begin, int64_t end) {
  return assign(p, begin, end);
}

}  // namespace compressops::cpu::kernels
