// int4 (W4A8) linear kernels at the scalar level: the packed layout walked in plain loops.
#include "../kernel_macros.h"
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

void gemm_scalar(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  const int64_t gs = p.group_size;
  const int64_t gstride = int4_group_stride(gs);
  const int64_t bstride = gstride * p.groups;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const uint8_t* wb = p.w + nb * bstride;
    for (int64_t m = 0; m < p.m; ++m) {
      const int8_t* xr = p.a + m * p.lda;
      float y[NR] = {};
      for (int64_t g = 0; g < p.groups; ++g) {
        const uint8_t* wg = wb + g * gstride;
        int32_t acc[NR] = {};
        for (int64_t j = 0; j < gs / 8; ++j) {
          const int8_t* xp = xr + g * gs + j * 8;
          for (int64_t c = 0; c < NR; ++c) {
            for (int64_t i = 0; i < 4; ++i) {
              const uint8_t v = wg[j * 32 + c * 4 + i];
              acc[c] += static_cast<int32_t>(v & 15) * xp[i] + static_cast<int32_t>(v >> 4) * xp[4 + i];
            }
          }
        }
        float s[NR], zs[NR];
        std::memcpy(s, wg + gs * 4, sizeof(s));
        std::memcpy(zs, wg + gs * 4 + sizeof(s), sizeof(zs));
        const float as = p.a_scale[m * p.ldas + g], ac = p.a_corr[m * p.ldas + g];
        for (int64_t c = 0; c < NR; ++c) {
          y[c] = std::fma(static_cast<float>(acc[c]), s[c] * as, y[c]);
          y[c] = std::fma(-zs[c], ac, y[c]);
        }
      }
      const int64_t n0 = nb * NR;
      for (int64_t c = 0; c < NR && n0 + c < p.n; ++c) {
        float v = y[c];
        if (p.bias) v = v + p.bias[n0 + c];
        store_out(p, m, n0 + c, v);
      }
    }
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(int4_quantize_rows)(const Int4QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  quantize_rows(p, row_begin, row_end);
  return true;
}

bool COMPRESSOPS_KERNEL(int4_gemm)(const Int4GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  gemm_scalar(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
