// The k-means assignment loop shared by every level (kernel.h has the contract).
//
// Points go two registers at a time (GCC vectors of the level's width: 16 floats at avx512, 8 at
// avx2, 4 at scalar's SSE2 baseline; the same code at every level); each tile's coordinates, running minimum and index stay in registers while all
// k centroids pass over them, so a point-centroid pair costs d subtractions, d products, d - 1
// adds, a compare and two selects and no memory traffic. The vectors never cross a function
// boundary (the ABI of 64-byte vectors differs between levels). A last partial tile runs on a
// zero-padded copy, with the same arithmetic.
//
// Internal linkage: each level file compiles its own copy with its own flags, and no copy may stand
// in for another at link time.
#pragma once
#include <cstdint>
#include <cstring>

#include "kernel.h"

namespace compressops::cpu::kernels {
namespace {

// One register of floats at the level's width (the widest the compiler was told it may use).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 4;
#endif
typedef float FV __attribute__((vector_size(kLanes * 4)));
typedef int32_t IV __attribute__((vector_size(kLanes * 4)));
constexpr int64_t kTile = 2 * kLanes;  // points per tile

// Distances of tile points (x: coordinate j of point i at x[j * stride + i], i < kTile) to the k
// centroids c [k, d]; the nearest one's distance and index into dist[0:m] and index[0:m].
template <int D>
__attribute__((always_inline)) inline void assign_tile(const float* x, int64_t stride, const float* c, int64_t k,
                                                       float* dist, int64_t* index, int64_t m) {
  FV xa[D], xb[D];
  for (int j = 0; j < D; ++j) {
    std::memcpy(&xa[j], x + j * stride, sizeof(FV));
    std::memcpy(&xb[j], x + j * stride + kLanes, sizeof(FV));
  }
  FV best_a = {}, best_b = {};
  IV idx_a = {}, idx_b = {};
  for (int64_t cc = 0; cc < k; ++cc) {
    const float* cv = c + cc * D;
    FV ta = xa[0] - cv[0], tb = xb[0] - cv[0];
    FV sa = ta * ta, sb = tb * tb;
    for (int j = 1; j < D; ++j) {
      ta = xa[j] - cv[j];
      tb = xb[j] - cv[j];
      sa = sa + ta * ta;
      sb = sb + tb * tb;
    }
    if (cc == 0) {
      best_a = sa;
      best_b = sb;
      continue;
    }
    // Strictly less: a tie keeps the lower index, and a NaN distance never replaces a number.
    const IV ca = sa < best_a, cb = sb < best_b;
    const int32_t ci = static_cast<int32_t>(cc);
    best_a = ca ? sa : best_a;
    best_b = cb ? sb : best_b;
    idx_a = ca ? ci : idx_a;
    idx_b = cb ? ci : idx_b;
  }
  float bd[kTile];
  int32_t bi[kTile];
  std::memcpy(bd, &best_a, sizeof best_a);
  std::memcpy(bd + kLanes, &best_b, sizeof best_b);
  std::memcpy(bi, &idx_a, sizeof idx_a);
  std::memcpy(bi + kLanes, &idx_b, sizeof idx_b);
  for (int64_t i = 0; i < m; ++i) {
    dist[i] = bd[i];
    index[i] = bi[i];
  }
}

template <int D>
void assign_subspace(const float* x, const float* c, int64_t n, int64_t k, float* dist, int64_t* index) {
  int64_t i0 = 0;
  for (; i0 + kTile <= n; i0 += kTile) assign_tile<D>(x + i0, n, c, k, dist + i0, index + i0, kTile);
  if (i0 < n) {
    float pad[D * kTile] = {};
    for (int j = 0; j < D; ++j) std::memcpy(pad + j * kTile, x + j * n + i0, (n - i0) * sizeof(float));
    assign_tile<D>(pad, kTile, c, k, dist + i0, index + i0, n - i0);
  }
}

// Any d: the same sum, j in order, one point-centroid pair at a time.
void assign_subspace_any(const float* x, const float* c, int64_t n, int64_t k, int64_t d, float* dist,
                         int64_t* index) {
  for (int64_t i = 0; i < n; ++i) {
    float best = 0.0f;
    int64_t bi = 0;
    for (int64_t cc = 0; cc < k; ++cc) {
      const float* cv = c + cc * d;
      float t = x[i] - cv[0];
      float s = t * t;
      for (int64_t j = 1; j < d; ++j) {
        t = x[j * n + i] - cv[j];
        s = s + t * t;
      }
      if (cc == 0 || s < best) {
        best = s;
        bi = cc;
      }
    }
    dist[i] = best;
    index[i] = bi;
  }
}

// counts and float64 coordinate sums per centroid of one subspace's assignment, in point order
// (the subspace's points are still in cache from the assignment).
void accumulate_subspace(const float* x, const int64_t* index, int64_t n, int64_t d, double* sums,
                         int64_t* counts) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = index[i];
    counts[c] += 1;
    double* sc = sums + c * d;
    for (int64_t j = 0; j < d; ++j) sc[j] += static_cast<double>(x[j * n + i]);
  }
}

template <int D>
void assign_range(const KmeansAssignParams& p, int64_t begin, int64_t end) {
  for (int64_t s = begin; s < end; ++s) {
    const float* x = p.x + s * p.d * p.n;
    const float* c = p.c + s * p.k * p.d;
    int64_t* index = p.index + s * p.n;
    if constexpr (D > 0) {
      assign_subspace<D>(x, c, p.n, p.k, p.dist + s * p.n, index);
    } else {
      assign_subspace_any(x, c, p.n, p.k, p.d, p.dist + s * p.n, index);
    }
    accumulate_subspace(x, index, p.n, p.d, p.sums + s * p.k * p.d, p.counts + s * p.k);
  }
}

inline bool assign(const KmeansAssignParams& p, int64_t begin, int64_t end) {
  switch (p.d) {
    case 1: assign_range<1>(p, begin, end); break;
    case 2: assign_range<2>(p, begin, end); break;
    case 4: assign_range<4>(p, begin, end); break;
    case 8: assign_range<8>(p, begin, end); break;
    case 16: assign_range<16>(p, begin, end); break;
    default: assign_range<0>(p, begin, end); break;
  }
  return true;
}

}  // namespace
}  // namespace compressops::cpu::kernels
