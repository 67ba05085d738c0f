// PQ lookup-table linear kernels at the scalar level: plain loops, the reference shape of the
// vector levels' code.
#include "../kernel_macros.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

void table_row_scalar(const PqTableParams& p, const float* xs, const float* cb, float* t) {
  const int64_t kc = p.ncent, d = p.d;
  for (int64_t c = 0; c < kc; ++c) t[c] = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    const float xv = xs[j];
    for (int64_t c = 0; c < kc; ++c) t[c] += xv * cb[j * kc + c];
  }
}

void table_bounds_scalar(const PqQuantizeParams& p, const float* tab, float* lows, float* range, bool* finite) {
  for (int64_t s = 0; s < p.s_pad; ++s) {
    float lo = tab[s * 16], hi = tab[s * 16];
    for (int c = 0; c < 16; ++c) {
      const float t = tab[s * 16 + c];
      if (!std::isfinite(t)) *finite = false;
      lo = std::min(lo, t);
      hi = std::max(hi, t);
    }
    lows[s] = lo;
    *range = std::max(*range, hi - lo);
  }
}

void table_entries_scalar(const PqQuantizeParams& p, const float* tab, const float* lows, float inv, uint8_t* q) {
  for (int64_t s = 0; s < p.s_pad; ++s) {
    for (int c = 0; c < 16; ++c) {
      float v = std::nearbyint((tab[s * 16 + c] - lows[s]) * inv);
      v = std::min(255.0f, std::max(0.0f, v));
      q[s * 16 + c] = static_cast<uint8_t>(v);
    }
  }
}

void scan16(const Pq16ScanParams& p, int64_t nb0, int64_t nb1) {
  const int64_t pairs = p.s_pad / 2;
  int32_t acc[32];
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const uint8_t* blk = p.codes + nb * pairs * 32;
    for (int64_t m = 0; m < p.m; ++m) {
      const uint8_t* q = p.qtab + m * p.s_pad * 16;
      for (int j = 0; j < 32; ++j) {
        int32_t s = 0;
        for (int64_t pr = 0; pr < pairs; ++pr) {
          const uint8_t b = blk[pr * 32 + j];
          s += q[(2 * pr) * 16 + (b & 15)] + q[(2 * pr + 1) * 16 + (b >> 4)];
        }
        acc[j] = s;
      }
      finish_block16(p, m, nb, acc);
    }
  }
}

// k=256 batched: plain loops (the reference shape of the AVX2 level's code).
template <int MT>
void build_slice(const Pq256BatchParams& p, int64_t tile, int64_t s0, int64_t s1, float* tab) {
  const int64_t d = p.d;
  for (int64_t s = s0; s < s1; ++s) {
    float* t = tab + (s - s0) * 256 * MT;
    const float* cb = p.cb_t + s * d * 256;
    const float* xs = p.xt + s * d * p.ldxt + tile * MT;
    for (int64_t c = 0; c < 256; ++c) {
      float a[MT] = {};
      for (int64_t j = 0; j < d; ++j) {
        const float w = cb[j * 256 + c];
        for (int r = 0; r < MT; ++r) a[r] += w * xs[j * p.ldxt + r];
      }
      for (int r = 0; r < MT; ++r) t[c * MT + r] = a[r];
    }
  }
}

// One input row: centroids innermost, so the compiler can vectorize with baseline SIMD.
template <>
void build_slice<1>(const Pq256BatchParams& p, int64_t, int64_t s0, int64_t s1, float* tab) {
  const int64_t d = p.d;
  for (int64_t s = s0; s < s1; ++s) {
    float* t = tab + (s - s0) * 256;
    const float* cb = p.cb_t + s * d * 256;
    const float* xs = p.xt + s * d * p.ldxt;
    for (int64_t c = 0; c < 256; ++c) t[c] = 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      const float xv = xs[j * p.ldxt];
      for (int64_t c = 0; c < 256; ++c) t[c] += xv * cb[j * 256 + c];
    }
  }
}

template <int MT>
inline void scan_block(const uint8_t* blk, int64_t g, const float* tab, float* part, bool first) {
  for (int i = 0; i < 8; ++i) {
    float a[MT];
    for (int r = 0; r < MT; ++r) a[r] = first ? 0.0f : part[i * MT + r];
    for (int64_t t = 0; t < g; ++t) {
      const float* e = tab + (t * 256 + blk[t * 8 + i]) * MT;
      for (int r = 0; r < MT; ++r) a[r] += e[r];
    }
    for (int r = 0; r < MT; ++r) part[i * MT + r] = a[r];
  }
}

// One input row: scalar loads, one accumulator per output row of the block, so the 8 chains run
// side by side.
template <>
inline void scan_block<1>(const uint8_t* blk, int64_t g, const float* tab, float* part, bool first) {
  float a[8];
  for (int i = 0; i < 8; ++i) a[i] = first ? 0.0f : part[i];
  for (int64_t t = 0; t < g; ++t) {
    const float* tt = tab + t * 256;
    const uint8_t* cp = blk + t * 8;
    for (int i = 0; i < 8; ++i) a[i] += tt[cp[i]];
  }
  for (int i = 0; i < 8; ++i) part[i] = a[i];
}

}  // namespace

bool COMPRESSOPS_KERNEL(pq256_batch)(const Pq256BatchParams& p, int64_t u0, int64_t u1) {
  return batch256_tiles(p, u0, u1);
}

bool COMPRESSOPS_KERNEL(pq_build_tables)(const PqTableParams& p, int64_t u0, int64_t u1) {
  if (p.ncent % 16 != 0) return false;
  build_tables<table_row_scalar>(p, u0, u1);
  return true;
}

bool COMPRESSOPS_KERNEL(pq16_quantize_tables)(const PqQuantizeParams& p, int64_t m0, int64_t m1) {
  quantize_tables<table_bounds_scalar, table_entries_scalar>(p, m0, m1);
  return true;
}

bool COMPRESSOPS_KERNEL(pq16_scan)(const Pq16ScanParams& p, int64_t nb0, int64_t nb1) {
  if (nb0 < nb1) scan16(p, nb0, nb1);
  return true;
}

}  // namespace compressops::cpu::kernels
