// PQ lookup-table linear kernels: what the level files share. Each level file includes this header,
// so its code is compiled again with that level's flags; the anonymous namespace keeps every
// level's copy to its own object (with external linkage the linker would keep one copy, and the
// scalar kernel could end up running code compiled for AVX2).
//
// k=16 ("fast scan"): each input row's fp32 table L[s][c] is quantized to uint8 (one scale per
// row, one offset per subspace) and the scan sums uint8 lookups in integers. Integer sums are
// exact, so the only error against the exact fp32 table is the table rounding:
// |err| <= S * scale / 2.
//
// k=256: exact fp32 tables, built per tile of input rows (1, 8 or 16) and per chunk of 16
// subspaces into a small scratch slice, laid out [s][c][row] so that one code byte selects a
// contiguous vector of the tile's rows: plain loads and adds, no gathers (slow on Zen 3).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../../../common/pq_layout.h"
#include "kernel.h"

namespace compressops::cpu::kernels {
namespace {

// The walk of pq_build_tables over work units (input row, chunk of kPqTableChunk subspaces). Per
// subspace s, TableRow(p, xs, cb, t) writes the row's table entries t[c] = sum_j xs[j] * cb[j][c]
// for c < ncent, from the subspace's d inputs xs and its codebook slice cb = cb_t[s] ([d][ncent]).
template <auto TableRow>
inline void build_tables(const PqTableParams& p, int64_t u0, int64_t u1) {
  const int64_t chunks = (p.s_pad + kPqTableChunk - 1) / kPqTableChunk;
  const int64_t kc = p.ncent, d = p.d;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t m = u / chunks, s0 = (u % chunks) * kPqTableChunk;
    const int64_t s1 = std::min(p.s_pad, s0 + kPqTableChunk);
    const float* x = p.x + m * p.ldx;
    float* tab = p.table + m * p.s_pad * kc;
    for (int64_t s = s0; s < s1; ++s) {
      float* t = tab + s * kc;
      const float* cb = p.cb_t + s * d * kc;
      TableRow(p, x + s * d, cb, t);
    }
  }
}

// k=16 table quantization (PqQuantizeParams), row by row. Bounds(p, tab, lows, &range, &finite)
// stores each subspace's minimum in lows[s], raises range to the largest max - min and clears
// finite at any Inf/NaN entry; Entries(p, tab, lows, inv, q) writes the uint8 entries of a finite
// table.
// Every entry is checked for Inf/NaN (not only each subspace's min and max: a NaN compares false
// and would slip past them); a non-finite table gets offsum NaN, and the host recomputes the row
// exactly (pq_linear.cpp pq16_row_scannable).
// Each level's Bounds and Entries must give the scalar ones' results bit for bit: min/max and the
// range do not depend on the order of the comparisons, offsum is summed here in double in subspace
// order for every level, and the rounding is round-to-nearest-even then clamping in float, as
// std::nearbyint then min/max.
template <auto Bounds, auto Entries>
inline void quantize_tables(const PqQuantizeParams& p, int64_t m0, int64_t m1) {
  std::vector<float> lows(static_cast<size_t>(p.s_pad));
  for (int64_t m = m0; m < m1; ++m) {
    const float* tab = p.table + m * p.s_pad * 16;
    uint8_t* q = p.qtab + m * p.s_pad * 16;
    float range = 0.0f;
    bool finite = true;
    Bounds(p, tab, lows.data(), &range, &finite);
    const float scale = (finite && range > 0.0f) ? range / 255.0f : 1.0f;
    const float inv = 1.0f / scale;
    double offsum = 0.0;
    for (int64_t s = 0; s < p.s_pad; ++s) offsum += lows[s];
    if (!finite) {
      std::memset(q, 0, static_cast<size_t>(p.s_pad) * 16);
    } else {
      Entries(p, tab, lows.data(), inv, q);
    }
    p.scale[m] = scale;
    // NaN marks a table that cannot be quantized (x held Inf/NaN) for the host's exact recompute
    p.offsum[m] = finite ? static_cast<float>(offsum) : std::nanf("");
  }
}

inline void finish_block16(const Pq16ScanParams& p, int64_t m, int64_t nb, const int32_t* acc) {
  const float sc = p.scale[m], off = p.offsum[m];
  float* o = p.out + m * p.ldo + nb * 32;
  for (int j = 0; j < 32; ++j) {
    const int64_t n = nb * 32 + j;
    float v = sc * static_cast<float>(acc[j]) + off;
    if (p.bias && n < p.n) v += p.bias[n];
    o[j] = v;
  }
}

// k=256: each level file defines these two for MT in 1, 8 and 16 (explicit specializations where
// one input row wants another loop shape), and its pq256_batch entry runs batch256<MT>.
// build_slice: tab[s - s0][c][0:MT] = the table entries of the tile's MT input rows for subspaces
// [s0, s1) (tab[s - s0][c] for MT = 1).
template <int MT>
void build_slice(const Pq256BatchParams& p, int64_t tile, int64_t s0, int64_t s1, float* tab);
// scan_block: for the 8 output rows i of one block, part[i][0:MT] (zeroed first if `first`) +=
// the sum over g subspaces t of tab[t][code(i, t)][0:MT]; blk holds the block's codes [t][8].
template <int MT>
inline void scan_block(const uint8_t* blk, int64_t g, const float* tab, float* part, bool first);

// k=256 batched driver (every level): per unit (tile of MT input rows, range of output blocks),
// walk the code chunks; per slice of `group` subspaces build the tile's table into scratch and
// add it into the per-output-row partial sums; finally transpose into out and add the bias.
template <int MT>
void batch256(const Pq256BatchParams& p, int64_t u0, int64_t u1) {
  const int64_t n_pad = (p.n + 7) / 8 * 8, blocks = n_pad / 8;
  const int64_t pb = pq256_part_blocks(p);
  float* tab = p.scratch;
  float* part = p.scratch + p.group * 256 * MT;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t tile = u / p.n_parts, nb0 = (u % p.n_parts) * pb, nb1 = std::min(blocks, nb0 + pb);
    if (nb0 >= nb1) continue;
    for (int64_t c0 = 0; c0 < p.s; c0 += kPq256ChunkSubspaces) {
      const int64_t sc = std::min(kPq256ChunkSubspaces, p.s - c0);
      const uint8_t* chunk = p.codes + c0 * n_pad;
      for (int64_t g0 = 0; g0 < sc; g0 += p.group) {
        const int64_t g = std::min(p.group, sc - g0);
        build_slice<MT>(p, tile, c0 + g0, c0 + g0 + g, tab);
        const bool first = c0 == 0 && g0 == 0;
        for (int64_t nb = nb0; nb < nb1; ++nb)
          scan_block<MT>(chunk + nb * sc * 8 + g0 * 8, g, tab, part + (nb - nb0) * 8 * MT, first);
      }
    }
    const int64_t rows = std::min<int64_t>(MT, p.m - tile * MT);
    const int64_t n1 = std::min(p.n, nb1 * 8);
    for (int64_t r = 0; r < rows; ++r) {
      float* o = p.out + (tile * MT + r) * p.ldo;
      const float* src = part - nb0 * 8 * MT + r;
      if (p.bias) {
        for (int64_t n = nb0 * 8; n < n1; ++n) o[n] = src[n * MT] + p.bias[n];
      } else {
        for (int64_t n = nb0 * 8; n < n1; ++n) o[n] = src[n * MT];
      }
    }
  }
}

// Every level's pq256_batch entry: the tile heights it has loop shapes for (1, 8 or 16 input rows);
// declines any other.
inline bool batch256_tiles(const Pq256BatchParams& p, int64_t u0, int64_t u1) {
  if (p.mt != 1 && p.mt != 8 && p.mt != 16) return false;
  if (u0 < u1) {
    if (p.mt == 1) {
      batch256<1>(p, u0, u1);
    } else if (p.mt == 8) {
      batch256<8>(p, u0, u1);
    } else {
      batch256<16>(p, u0, u1);
    }
  }
  return true;
}

}  // namespace
}  // namespace compressops::cpu::kernels
