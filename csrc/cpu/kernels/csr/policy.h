// The CSR family's tuning rules, by CPU level: when a call takes the dense route (dense_route.h)
// or the transposed-activation kernels, how many batch rows a kernel call gets, and how the rows of
// the weight are split across threads. The host looks them up once per call, for the level its
// kernel selection returned. Torch-free.
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace compressops::cpu::kernels {

struct CsrPolicy {
  // The dense route from this batch size, for matrices with at least this many percent nonzeros.
  int64_t dense_min_m, dense_min_nonzero_pct;
  // The transposed kernels (CsrParams::xt) from this many batch rows; below it one dot product
  // per batch row.
  int64_t transposed_min_m;
  // Batches run in chunks of at most this many rows (at most kCsrMaxLanes, checked by the host).
  int64_t chunk_m;
  // Work split: about pieces_per_thread pieces per thread, each of equal cost, where a row costs
  // its nonzeros plus row_cost.
  int64_t pieces_per_thread, row_cost;
  // Weight rows per at::parallel_for task when the dense route decodes a block.
  int64_t decode_grain_rows;

  constexpr bool dense(int64_t m, int64_t n, int64_t k, int64_t nnz) const {
    return m >= dense_min_m && 100 * nnz >= dense_min_nonzero_pct * n * k;
  }
  constexpr bool transposed(int64_t m) const { return m >= transposed_min_m; }
};

// avx2, measured on the development VM: AMD EPYC (Zen 3) KVM guest, 2 vCPUs, AVX2 only, 32 MiB
// LLC, 2 threads, same-process A/B runs on 2026-11-23.
inline constexpr CsrPolicy kCsrZen3Avx2 = {
    // Kernel (64-row chunks) vs route at M in {64, 128, 256, 512}, 50-80% sparsity, N x K in
    // {4096 x 4096, 1536 x 384, 384 x 1536}: at 50-60% sparsity the route was 1.06-1.30x faster at
    // M = 256 and 1.13-1.47x at M = 512; at 70% 0.78-1.02x and at 80% 0.51-0.82x, so sparser
    // matrices keep the kernel at every batch size.
    .dense_min_m = 256,
    .dense_min_nonzero_pct = 35,
    // 90% and 70% sparsity, 4096 x 4096 and 1536 x 384: the transposed kernel 1.14-1.88x faster
    // at M = 4, 1.29-3.04x at M = 6, 1.71-3.69x at M = 8; at M = 3 0.78-1.65x, at M = 2 0.68-1.04x.
    .transposed_min_m = 4,
    // M = 128..1024, 50-90% sparsity, N x K in {384, 1536, 4096}^2, chunks of 32, 64, 96, 128, 256
    // and none: 64 was best or within noise of it everywhere, and 1.2-1.9x faster than no
    // chunking at M = 512 (4096 x 4096 at 90%: 47 ms against 90 ms), where the transposed
    // activations of a whole batch outgrow the cache.
    .chunk_m = 64,
    // Never swept: chosen when the kernels were written. 8 pieces a thread even out rows of
    // uneven length; 4 nonzeros per row stand for a row's fixed cost (pointers, the store).
    .pieces_per_thread = 8,
    .row_cost = 4,
    // Never swept: 16 rows of 4096 fp32 are 256 KiB of decoded weight per task.
    .decode_grain_rows = 16,
};

// The policy for a call whose kernels run at `choice`. Emulated levels take their native level's
// policy: under emulation speed means nothing, and the same routes keep emulated runs covering
// the same code paths. Only avx2 was measured. scalar takes avx2's values: its kernel is slower,
// so the dense route would pay from smaller batches there and avx2's thresholds only route later
// than needed (it reads no transposed activations). avx512 and up have no CSR kernels of their
// own (the avx2 ones run), so avx2's values are the measured ones for what runs.
constexpr CsrPolicy csr_policy(IsaChoice choice) {
  switch (choice.level) {
    case CpuIsa::kAVX2:
      return kCsrZen3Avx2;
    default:  // never measured: see above
      return kCsrZen3Avx2;
  }
}

}  // namespace compressops::cpu::kernels
