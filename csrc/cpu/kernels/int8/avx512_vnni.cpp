// int8 linear kernels at the avx512_vnni level: vpdpbusd on 512-bit vectors for the GEMM.
// Quantization, the GEMM epilogue and the weight-only GEMM are common.h's AVX2 code, compiled here
// with this level's flags.
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

// MR rows x 16 columns. vpdpbusd multiplies unsigned by signed bytes, so activations go in as
// a + 128 (a xor 0x80) and 128 * col_sum comes off at the end; int32 lanes never overflow for
// k below 2^31 / (255 * 127) ~ 66000 per lane group, which the host checks.
template <int MR>
inline void ukernel_vnni(const Int8GemmParams& p, int64_t m0, int64_t nb) {
  const int8_t* wblk = p.w + nb * NR * p.k_pad;
  const int64_t kg = p.k_pad / KR;
  const __m512i flip = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  __m512i acc[MR];
  const int8_t* arow[MR];
  for (int r = 0; r < MR; ++r) {
    acc[r] = _mm512_setzero_si512();
    arow[r] = p.a + (m0 + r) * p.lda;
  }
  for (int64_t g = 0; g < kg; ++g) {
    const __m512i w = _mm512_loadu_si512(wblk + g * NR * KR);
    for (int r = 0; r < MR; ++r) {
      int32_t a4;
      std::memcpy(&a4, arow[r] + g * KR, 4);
      const __m512i a = _mm512_xor_si512(_mm512_set1_epi32(a4), flip);
      acc[r] = _mm512_dpbusd_epi32(acc[r], a, w);
    }
  }
  const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(p.col_sums + nb * NR), 7);
  for (int r = 0; r < MR; ++r) {
    const __m512i v = _mm512_sub_epi32(acc[r], comp);
    epilogue_avx2(p, m0 + r, nb * NR, _mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  }
}

constexpr int kMR = 8;
inline void ukernel_rows(const Int8GemmParams& p, int64_t m0, int rows, int64_t nb) {
  switch (rows) {
    case 8: ukernel_vnni<8>(p, m0, nb); break;
    case 7: ukernel_vnni<7>(p, m0, nb); break;
    case 6: ukernel_vnni<6>(p, m0, nb); break;
    case 5: ukernel_vnni<5>(p, m0, nb); break;
    case 4: ukernel_vnni<4>(p, m0, nb); break;
    case 3: ukernel_vnni<3>(p, m0, nb); break;
    case 2: ukernel_vnni<2>(p, m0, nb); break;
    default: ukernel_vnni<1>(p, m0, nb); break;
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(int8_quantize_rows)(const Int8QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) quantize_row_avx2(p, r);
  return true;
}

bool COMPRESSOPS_KERNEL(int8_gemm)(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  // Lane overflow bound of the unsigned-activation trick (see ukernel_vnni).
  if (p.k_pad > 65536) return false;
  gemm_block_groups<kMR, ukernel_rows>(p, nb_begin, nb_end);
  return true;
}

bool COMPRESSOPS_KERNEL(int8_weight_only_gemm)(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  weight_only_gemm_avx2(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
