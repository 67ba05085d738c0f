// The 2:4 family's tuning rules, by CPU level: from which batch size a call takes the dense route
// (dense_route.h) or the transposed-activation kernels, and how it splits work across threads.
// The host looks them up once per call, for the level its kernel selection returned. Torch-free.
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace compressops::cpu::kernels {

struct Sparse24Policy {
  // Layers of more than this many weights (N x Kp) are "large": decoding them costs more per call,
  // and the row kernel, once per batch row, keeps winning longer.
  int64_t large_weights;
  // Float values: the dense route from this batch size (small layers, large layers).
  int64_t float_dense_min_m, float_dense_min_m_large;
  // int8 values: the dense route (the int8 GEMM on the weight repacked from the 2:4 form) from
  // this batch size.
  int64_t int8_dense_min_m;
  // Float values: the transposed kernel (Sparse24Params::xt) from this batch size (small layers,
  // large layers); below it the row kernel.
  int64_t float_transposed_min_m, float_transposed_min_m_large;
  // int8 values: the transposed kernel (Sparse24Int8Params::qt16) from this batch size.
  int64_t int8_transposed_min_m;
  // at::parallel_for grains: output channels per task in the kernels, and weight rows per task
  // when the dense route decodes a block.
  int64_t grain_channels, decode_grain_rows;

  constexpr bool large(int64_t n, int64_t kp) const { return n * kp > large_weights; }
  constexpr bool float_dense(int64_t m, int64_t n, int64_t kp) const {
    return m >= (large(n, kp) ? float_dense_min_m_large : float_dense_min_m);
  }
  constexpr bool int8_dense(int64_t m) const { return m >= int8_dense_min_m; }
  constexpr bool float_transposed(int64_t m, int64_t n, int64_t kp) const {
    return m >= (large(n, kp) ? float_transposed_min_m_large : float_transposed_min_m);
  }
  constexpr bool int8_transposed(int64_t m) const { return m >= int8_transposed_min_m; }
};

// avx2, measured on the development VM: AMD EPYC (Zen 3) KVM guest, 2 vCPUs, AVX2 only, 32 MiB
// LLC, 2 threads, same-process A/B runs on 2026-11-23.
inline constexpr Sparse24Policy kSparse24Zen3Avx2 = {
    .large_weights = int64_t{1} << 22,
    // Kernel vs route at M from 16 to 512, N x K in {384 x 384, 1536 x 384, 384 x 1536,
    // 4096 x 4096, 11008 x 4096}: even at M = 128 (0.92-1.12x), the route 1.2-1.5x faster from
    // M = 256; layers of more than 4M weights cross later.
    .float_dense_min_m = 128,
    .float_dense_min_m_large = 192,
    // M in {64, 128, 256} on the four larger shapes: even at M = 64 (0.87-1.02x), the route
    // 1.05-1.36x faster at M = 128 and 1.22-1.47x at M = 256.
    .int8_dense_min_m = 128,
    // fp32 and bf16 values: at 1536 x 384 and 384 x 1536 the transposed kernel was 0.87-0.90x the
    // row kernel at M = 4 and 1.15-1.20x at M = 6; at 4096 x 4096 and 11008 x 4096 it was
    // 0.45-0.66x at M = 8, 0.63-0.80x at M = 12, 0.84-1.31x at M = 16 and 1.16-1.97x at M = 24.
    .float_transposed_min_m = 6,
    .float_transposed_min_m_large = 16,
    // At M = 8 the row kernel was 2.0-2.7x faster (4096 x 4096: 4.4 against 12.0 ms); at M = 16
    // 1.47x faster at 4096 x 4096 but 0.81-0.89x at the MiniLM shapes; from M = 32 the transposed
    // kernel was 1.2-1.9x faster everywhere.
    .int8_transposed_min_m = 16,
    // Never swept: chosen when the kernels were written. 32 channels of a 384-wide layer still
    // give 12 tasks; 16 rows of 4096 fp32 are 256 KiB of decoded weight per task.
    .grain_channels = 32,
    .decode_grain_rows = 16,
};

// The policy for a call whose kernels run at `choice`. Emulated levels take their native level's
// policy: under emulation speed means nothing, and the same routes keep emulated runs covering
// the same code paths. Only avx2 was measured. scalar takes avx2's values: its kernel is slower
// than the avx2 one, so the dense route would pay from smaller batches there, and the avx2
// thresholds only route later than needed (it reads no transposed activations). avx512 and up
// have no 2:4 kernels of their own (the avx2 ones run), so avx2's values are the measured ones
// for what runs.
constexpr Sparse24Policy sparse24_policy(IsaChoice choice) {
  switch (choice.level) {
    case CpuIsa::kAVX2:
      return kSparse24Zen3Avx2;
    default:  // never measured: see above
      return kSparse24Zen3Avx2;
  }
}

}  // namespace compressops::cpu::kernels
