// int8 linear kernels at the avx2 level: vpmaddubsw + vpmaddwd for the GEMM, with a two-stream
// GEMV for one row; quantization and the weight-only GEMM are common.h's AVX2 code.
#include "common.h"

namespace compressops::cpu::kernels {
namespace {

// Software prefetch distance into the weight stream (16 k-groups of one block ahead).
constexpr int64_t kPrefetchBytes = 1024;

// MR rows x 16 columns over the whole of k. vpmaddubsw needs an unsigned operand; taking |a|
// and moving a's sign onto w (vpsignb) keeps every pair sum within int16 (2 * 127 * 127), so
// nothing saturates and the result is exact.
template <int MR>
inline void ukernel_avx2(const Int8GemmParams& p, int64_t m0, int64_t nb) {
  const int8_t* wblk = p.w + nb * NR * p.k_pad;
  const int64_t kg = p.k_pad / KR;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
  const int8_t* arow[MR];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    arow[r] = p.a + (m0 + r) * p.lda;
  }
  for (int64_t g = 0; g < kg; ++g) {
    _mm_prefetch(reinterpret_cast<const char*>(wblk + g * NR * KR + kPrefetchBytes), _MM_HINT_T0);
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wblk + g * NR * KR));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wblk + g * NR * KR + 32));
    for (int r = 0; r < MR; ++r) {
      int32_t a4;
      std::memcpy(&a4, arow[r] + g * KR, 4);
      const __m256i a = _mm256_set1_epi32(a4);
      const __m256i abs_a = _mm256_sign_epi8(a, a);
      const __m256i p0 = _mm256_maddubs_epi16(abs_a, _mm256_sign_epi8(w0, a));
      const __m256i p1 = _mm256_maddubs_epi16(abs_a, _mm256_sign_epi8(w1, a));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
    }
  }
  for (int r = 0; r < MR; ++r) epilogue_avx2(p, m0 + r, nb * NR, acc[r][0], acc[r][1]);
}

// One row, two column blocks at once. At small M the kernel only streams weights; two
// independent streams and an explicit prefetch keep more cache-line requests in flight than one
// stream with the hardware prefetcher alone (measured: ~1.5x at M=1, K=N=4096).
inline void gemv_2blocks_avx2(const Int8GemmParams& p, int64_t m, int64_t nb) {
  const int8_t* w0p = p.w + nb * NR * p.k_pad;
  const int8_t* w1p = w0p + NR * p.k_pad;
  const int8_t* arow = p.a + m * p.lda;
  const int64_t kg = p.k_pad / KR;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  for (int64_t g = 0; g < kg; ++g) {
    const int64_t off = g * NR * KR;
    _mm_prefetch(reinterpret_cast<const char*>(w0p + off + kPrefetchBytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w1p + off + kPrefetchBytes), _MM_HINT_T0);
    int32_t a4;
    std::memcpy(&a4, arow + g * KR, 4);
    const __m256i a = _mm256_set1_epi32(a4);
    const __m256i abs_a = _mm256_sign_epi8(a, a);
    const __m256i w[4] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0p + off)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0p + off + 32)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1p + off)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1p + off + 32))};
    for (int i = 0; i < 4; ++i) {
      const __m256i prod = _mm256_maddubs_epi16(abs_a, _mm256_sign_epi8(w[i], a));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(prod, ones));
    }
  }
  epilogue_avx2(p, m, nb * NR, acc[0], acc[1]);
  epilogue_avx2(p, m, (nb + 1) * NR, acc[2], acc[3]);
}

// Three rows: 6 accumulators + 2 weight vectors + ones + per-row temporaries fit the 16 ymm
// registers; with four rows GCC spills accumulators and the loop-carried adds go through memory.
constexpr int kMR = 3;
inline void ukernel_rows(const Int8GemmParams& p, int64_t m0, int rows, int64_t nb) {
  switch (rows) {
    case 3: ukernel_avx2<3>(p, m0, nb); break;
    case 2: ukernel_avx2<2>(p, m0, nb); break;
    default: ukernel_avx2<1>(p, m0, nb); break;
  }
}

}  // namespace

bool COMPRESSOPS_KERNEL(int8_quantize_rows)(const Int8QuantizeParams& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) quantize_row_avx2(p, r);
  return true;
}

bool COMPRESSOPS_KERNEL(int8_gemm)(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  if (p.m == 1) {  // pure weight streaming: two blocks per pass, no block groups
    int64_t nb = nb_begin;
    for (; nb + 2 <= nb_end; nb += 2) gemv_2blocks_avx2(p, 0, nb);
    if (nb < nb_end) ukernel_rows(p, 0, 1, nb);
    return true;
  }
  gemm_block_groups<kMR, ukernel_rows>(p, nb_begin, nb_end);
  return true;
}

bool COMPRESSOPS_KERNEL(int8_weight_only_gemm)(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  weight_only_gemm_avx2(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
