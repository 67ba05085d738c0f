// int8 linear kernels at the avx2 level: an int16 vpmaddwd GEMM over widened copies of the
// operands for batches of 64 rows and more, the vpmaddubsw sign-trick tiles for fewer rows, and a
// two-stream GEMV for one row; quantization and the weight-only GEMM are common.h's AVX2 code.
//
// Why int16 for batches. AVX2 has no exact one-instruction int8 x int8 dot product: vpmaddubsw
// wants one unsigned operand, so the sign-trick tile spends, per 32 multiply-adds (one ymm of 8
// columns x 4 k), vpsignb + vpmaddubsw + vpmaddwd(ones) + vpaddd, plus a broadcast and vpsignb(a, a)
// per row shared by its 2 vectors: 5 vector-ALU uops per 32 MACs, 2 of them multiplies (3 rows x
// 16 columns fit the 16 ymm registers). With both operands widened to int16 (the weights of two
// column blocks once per 256-k chunk into a 16 KiB per-thread scratch, the activations once per
// row pair and chunk), vpmaddwd does 16 exact MACs and vpaddd accumulates them: per 32 MACs
// 2 x (vpmaddwd + vpaddd), plus one 32-bit broadcast per row and k pair shared by 4 weight
// vectors: 4 ALU uops + 0.5 broadcast, 2 multiplies (2 rows x 32 columns: 8 accumulators, 4
// weight vectors). The inner loop is 26 instructions per 128 MACs (6.5 per 32), the sign-trick
// loop 37 per 192 (6.2 per 32); what changes is where they go: no vpsignb and no vpmaddwd(ones)
// competing with the multiplies for the vector ports.
//
// The bound either way is the two vector-multiply pipes (Zen 2-4: FP0/FP3; Skylake and later:
// p0/p1) at 2 multiplies per 32 MACs, 32 MACs a cycle per core; the int16 loop also needs 4 ALU
// uops per 32 MACs on Zen's 4 vector pipes, so all 4 pipes bound it at the same 1 cycle per 32
// MACs. Measured on an AMD EPYC Zen 4 thread forced to avx2, weights in cache: 0.156-0.166 int8
// TOP/s, against 0.122 for the sign trick (the bound: 0.24 at 3.7 GHz). llvm-mca 14 -mcpu=skylake:
// 1.35 cycles per 32 MACs against 1.85 (Intel has 3 vector ALU ports, so the sign trick's fifth
// uop costs more there); Haswell, with one vpmaddwd port, is at 2.0 either way.
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

// ---- The int16 GEMM (batches of kInt16MinRows rows and more) ----
//
// Per thread and call: for each chunk of kMc rows, each pair of column blocks and each chunk of
// kKc k values, the pair's weights are widened into w16 (32 columns x kKc int16 = 16 KiB, stays
// in L1), then every row pair of the chunk is widened into a16 and multiplied; int32 partial sums
// wait in `part` between k chunks. Each int8 weight is widened once per kMc rows and each
// activation once per 32 columns, so the widening costs about 8 / kMc and 0.2 uops per 32 MACs.

// Below this many rows the sign-trick tiles take the batch. Measured on an AMD EPYC Zen 4 thread
// forced to avx2 (old and new kernel interleaved in one process): with the weights in cache the
// int16 path is 1.07x faster at 8 rows and 1.2-1.3x from 16, but with K=N=4096 weights streaming
// from memory it is 0.75x at 8 rows, 0.9x at 24-32, even at 48 and 1.1-1.25x from 64 (why the
// streaming case lags at few rows is not understood yet: it is not bandwidth, about 1 GB/s).
constexpr int64_t kInt16MinRows = 64;
constexpr int64_t kKc = 256;  // k values per chunk: w16 is 2 * NR * kKc int16
constexpr int64_t kMc = 128;  // rows per chunk: `part` is kMc * 2 * NR int32
constexpr int kPairMR = 2;    // rows per register tile: 2 x 4 accumulators + 4 weight vectors

// Weights of k-groups [g0, g0 + ng) of NB consecutive blocks starting at wblk, as int16 pairs:
// w16[q][c][j] = w[column c of the NB * 16][k = 2q + j], so one ymm holds 8 columns x one k pair.
template <int NB>
inline void widen_weights(const int8_t* wblk, int64_t k_pad, int64_t g0, int64_t ng, int16_t* w16) {
  // Within each 128-bit lane (4 columns x 4 k): the (k0, k1) bytes of the 4 columns, then (k2, k3).
  const __m256i pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  constexpr int64_t row = NB * 2 * NR;  // int16 per k pair
  for (int64_t g = 0; g < ng; ++g) {
    int16_t* lo = w16 + 2 * g * row;
    int16_t* hi = lo + row;
    for (int b = 0; b < NB; ++b) {
      const int8_t* src = wblk + b * NR * k_pad + (g0 + g) * NR * KR;
      for (int h = 0; h < 2; ++h) {
        __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * h));
        // Bring both lanes' (k0, k1) halves into the low 128 bits and the (k2, k3) halves into the high.
        x = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, pairs), 0xD8);
        const int64_t off = b * 2 * NR + 16 * h;
        _mm256_store_si256(reinterpret_cast<__m256i*>(lo + off), _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x)));
        _mm256_store_si256(reinterpret_cast<__m256i*>(hi + off), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1)));
      }
    }
  }
}

// kl int8 activations (a multiple of KR) sign-extended to int16.
inline void widen_row(const int8_t* a, int64_t kl, int16_t* a16) {
  int64_t i = 0;
  for (; i + 16 <= kl; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a16 + i), _mm256_cvtepi8_epi16(x));
  }
  for (; i < kl; ++i) a16[i] = a[i];
}

// acc[r][v] += sum over k pairs q of a16[r][2q..2q+1] . w16[q][8v..8v+7][0..1]. Kept out of line
// with GCC's partial PRE (-O3's -ftree-partial-pre) off: it turns every accumulator update of this
// loop into vpaddd plus a register copy (a third more instructions; with more accumulators, spills
// to the stack); without it the loop is loads, vpmaddwd and vpaddd only.
template <int MR, int NV>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-tree-partial-pre")))
#endif
void int16_tile(const int16_t* a16, int64_t lda16, const int16_t* w16, int64_t pairs, __m256i* accio) {
  __m256i acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = accio[r * NV + v];
  }
  for (int64_t q = 0; q < pairs; ++q) {
    __m256i w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w16 + q * NV * 16) + v);
      // Keeps each weight vector in a register for all MR rows: folded into vpmaddwd as a memory
      // operand it would be loaded MR times, and the loads (two 256-bit a cycle on Zen, Intel
      // alike) would bound the loop before the multiply pipes do.
      __asm__("" : "+x"(w[v]));
    }
    for (int r = 0; r < MR; ++r) {
      int32_t a2;
      std::memcpy(&a2, a16 + r * lda16 + 2 * q, 4);
      const __m256i b = _mm256_set1_epi32(a2);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(b, w[v]));
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) accio[r * NV + v] = acc[r][v];
  }
}

// Scratch of one int16 GEMM call, 64-byte aligned (whole cache lines for the aligned loads).
struct Int16Scratch {
  std::vector<int16_t> buf;
  std::vector<int32_t> part_buf;
  int16_t* w16;
  int16_t* a16;
  int32_t* part;
  explicit Int16Scratch(int64_t kc, int64_t rows) : buf(static_cast<size_t>(2 * NR * kc + kPairMR * kc + 64)),
        part_buf(static_cast<size_t>(rows * 2 * NR + 16)) {
    w16 = align64(buf.data());
    a16 = w16 + 2 * NR * kc;
    part = align64(part_buf.data());
  }
  template <typename T>
  static T* align64(T* ptr) {
    return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(ptr) + 63) & ~static_cast<uintptr_t>(63));
  }
};

// Rows [m0, m0 + MR) (relative to p) of blocks nb .. nb + NB - 1 over k chunk [k0, k0 + kl):
// widens the rows, accumulates onto the partial sums (zero at k0 == 0), and on the last chunk
// runs the epilogue instead of saving them.
template <int MR, int NB>
inline void int16_rows(const Int8GemmParams& p, Int16Scratch& s, int64_t kc, int64_t m_chunk, int64_t m0,
                       int64_t nb, int64_t k0, int64_t kl) {
  constexpr int NV = 2 * NB;
  for (int r = 0; r < MR; ++r) widen_row(p.a + (m_chunk + m0 + r) * p.lda + k0, kl, s.a16 + r * kc);
  alignas(32) __m256i acc[MR * NV];
  int32_t* part = s.part + m0 * 2 * NR;
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r * NV + v] = k0 == 0 ? _mm256_setzero_si256()
                                : _mm256_load_si256(reinterpret_cast<const __m256i*>(part + r * 2 * NR) + v);
    }
  }
  int16_tile<MR, NV>(s.a16, kc, s.w16, kl / 2, acc);
  if (k0 + kl < p.k_pad) {
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(part + r * 2 * NR) + v, acc[r * NV + v]);
      }
    }
    return;
  }
  for (int r = 0; r < MR; ++r) {
    for (int b = 0; b < NB; ++b) {
      epilogue_avx2(p, m_chunk + m0 + r, (nb + b) * NR, acc[r * NV + 2 * b], acc[r * NV + 2 * b + 1]);
    }
  }
}

// Lines [l0, l1) of the weights the next widen_weights call reads (the next k chunk of blocks nb
// and nb + 1, or the first chunk of the next pair); prefetching past the pack is harmless.
inline void prefetch_next_chunk(const Int8GemmParams& p, int64_t kc, int64_t nb, int64_t k0, int64_t l0,
                                int64_t l1) {
  const bool same = k0 + kc < p.k_pad;
  const int8_t* next = p.w + (same ? nb : nb + 2) * NR * p.k_pad + (same ? k0 + kc : 0) * NR;
  const int64_t lines = kc * NR / 64;  // per block
  for (int64_t l = l0; l < l1; ++l) {
    const int8_t* line = next + (l / lines) * NR * p.k_pad + (l % lines) * 64;
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
  }
}

template <int NB>
inline void int16_block_pair(const Int8GemmParams& p, Int16Scratch& s, int64_t kc, int64_t m_chunk, int64_t rows,
                             int64_t nb) {
  // The next chunk's weights are prefetched a slice per row tile, so they arrive while this chunk
  // is multiplied, spread out rather than in one burst of 128 lines.
  const int64_t tiles = (rows + kPairMR - 1) / kPairMR;
  const int64_t next_lines = 2 * kc * NR / 64;
  for (int64_t k0 = 0; k0 < p.k_pad; k0 += kc) {
    const int64_t kl = std::min(kc, p.k_pad - k0);
    widen_weights<NB>(p.w + nb * NR * p.k_pad, p.k_pad, k0 / KR, kl / KR, s.w16);
    for (int64_t t = 0; t < tiles; ++t) {
      prefetch_next_chunk(p, kc, nb, k0, t * next_lines / tiles, (t + 1) * next_lines / tiles);
      const int64_t m0 = t * kPairMR;
      if (m0 + kPairMR <= rows) {
        int16_rows<kPairMR, NB>(p, s, kc, m_chunk, m0, nb, k0, kl);
      } else {
        int16_rows<1, NB>(p, s, kc, m_chunk, m0, nb, k0, kl);
      }
    }
  }
}

inline void gemm_int16(const Int8GemmParams& p, int64_t nb_begin, int64_t nb_end) {
  const int64_t kc = std::min(kKc, p.k_pad);
  Int16Scratch s(kc, std::min(kMc, p.m));
  for (int64_t m_chunk = 0; m_chunk < p.m; m_chunk += kMc) {
    const int64_t rows = std::min(kMc, p.m - m_chunk);
    int64_t nb = nb_begin;
    for (; nb + 2 <= nb_end; nb += 2) int16_block_pair<2>(p, s, kc, m_chunk, rows, nb);
    if (nb < nb_end) int16_block_pair<1>(p, s, kc, m_chunk, rows, nb);
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
  if (p.m < kInt16MinRows) {
    gemm_block_groups<kMR, ukernel_rows>(p, nb_begin, nb_end);
  } else {
    gemm_int16(p, nb_begin, nb_end);
  }
  return true;
}

bool COMPRESSOPS_KERNEL(int8_weight_only_gemm)(const Int8WeightOnlyParams& p, int64_t nb_begin, int64_t nb_end) {
  weight_only_gemm_avx2(p, nb_begin, nb_end);
  return true;
}

}  // namespace compressops::cpu::kernels
