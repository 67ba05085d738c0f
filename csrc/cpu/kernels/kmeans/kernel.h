// Torch-free k-means assignment (compressops/algorithms/kmeans.py, op compressops::kmeans_assign):
// for every subspace s and point i, the nearest of the subspace's k centroids,
//   dist[s, i] = min_c sum_j (x[s, j, i] - c[s, c, j])^2,   index[s, i] = the lowest c reaching it,
// and the update step's inputs for that assignment: counts[s, c] = the points assigned to c and
// sums[s, c, j] = the sum of their coordinates j, in float64, added in point order.
// Each term is one float32 subtraction and one float32 product, summed in j order without fused
// multiply-adds (kernel objects build with -ffp-contract=off), so every level returns the same bits.
// Levels: scalar, avx2 and avx512 compile the one loop of common.h, vectorized across points with
// GCC vectors of the level's width (4, 8, 16 floats); no level declines a shape.
#pragma once
#include <cstdint>

#include "../../dispatch.h"

namespace compressops::cpu::kernels {

struct KmeansAssignParams {
  const float* x;   // [S, d, n] planar: coordinate j of point i of subspace s at (s * d + j) * n + i
  const float* c;   // [S, k, d]
  float* dist;      // [S, n]
  int64_t* index;   // [S, n]
  double* sums;     // [S, k, d], zero on entry
  int64_t* counts;  // [S, k], zero on entry
  int64_t d, k, n;  // d, k, n >= 1
};

// Fills subspaces [begin, end); returns true.
using KmeansAssignFn = bool(const KmeansAssignParams&, int64_t begin, int64_t end);
COMPRESSOPS_DECLARE_KERNEL(kmeans_assign_subspaces, KmeansAssignFn)

}  // namespace compressops::cpu::kernels
