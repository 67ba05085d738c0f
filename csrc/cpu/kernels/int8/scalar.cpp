// int8 linear kernels at the scalar level: the plain loops, the definition the vector levels match.
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

constexpr int kMR = 1;
inline void ukernel_rows(const Int8GemmParams& p, int64_t m0, int /*rows*/, int64_t nb) {
  const int8_t* wblk = p.w + nb * NR * p.k_pad;
  const int8_t* a = p.a + m0 * p.lda;
  int32_t acc[NR] = {0};
  for (int64_t g = 0; g < p.k_pad / KR; ++g) {
    for (int64_t c = 0; c < NR; ++c) {
      const int8_t* w = wblk + (g * NR + c) * KR;
      int32_t s = 0;
      for (int64_t j = 0; j < KR; ++j) s += static_cast<int32_t>(a[g * KR + j]) * w[j];
      acc[c] += s;
    }
  }
  epilogue_scalar(p, m0, nb * NR, acc);
}

}  // namespace

bool COMPRESSOPS_KERNEL(int8_quantize_rows)(const Int8QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t off = r * p.ldx;
    const void* x = p.x_kind == FloatKind::kF32
                        ? static_cast<const void*>(static_cast<const float*>(p.x) + off)
                        : static_cast<const void*>(static_cast<const uint16_t*>(p.x) + off);
    int8_t* q = p.q + r * p.ldq;
    float scale, inv = 0.0f;
    bool zero_row = false;
    if (p.static_scale) {
      scale = p.static_scale[0];
      inv = p.static_inv[0];
    } else {
      float amax = 0.0f;
      bool nonfinite = false;
      for (int64_t i = 0; i < p.k; ++i) {
        const float a = std::fabs(load_x(x, p.x_kind, i));
        nonfinite |= !std::isfinite(a);
        amax = std::max(amax, a);
      }
      zero_row = !dynamic_scale(amax, nonfinite, &scale, &inv);
    }
    p.scale[r] = scale;
    for (int64_t i = 0; i < p.k_pad; ++i) {
      q[i] = (zero_row || i >= p.k) ? 0 : quantize_value(load_x(x, p.x_kind, i) * inv);
    }
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int8_gemm)(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  gemm_block_groups<kMR, ukernel_rows>(p, nb_begin, nb_end);
  return true;
}

// x rows hold k_pad values, zero beyond k (the host pads), and padded weights are zero, so whole
// k-groups suffice.
bool COMPRESSOPS_KERNEL(int8_weight_only_gemm)(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  const int64_t kg = p.k_pad / KR;
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const int8_t* wblk = p.w + nb * NR * p.k_pad;
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.ldx;
      float sums[NR];
      for (int64_t c = 0; c < NR; ++c) {
        sums[c] = 0.0f;
        for (int64_t g = 0; g < kg; ++g) {
          for (int64_t j = 0; j < KR; ++j) {
            sums[c] += x[g * KR + j] * static_cast<float>(wblk[(g * NR + c) * KR + j]);
          }
        }
      }
      weight_only_store(p, m, nb * NR, sums);
    }
  }
  return true;
}

}  // namespace compressops::cpu::kernels
