// The PQ family's tuning rules, by CPU level: when a call decodes the weight and runs a dense GEMM
// (dense_route.h) instead of building lookup tables, and how the k=16 table build is split across
// threads. The host looks them up once per call, for the level its table-building kernel was
// selected at. Torch-free.
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace compressops::cpu::kernels {

struct PqPolicy {
  // Below this batch size the tables always run: decoding the weight is not amortized.
  int64_t dense_min_m;
  // Estimated time of the table route over the dense route's, for N output rows and subspaces of
  // d: (k256_per_n / N + k256_per_d / d) with 256 centroids, (k16_per_n / N + k16_const) / d with
  // 16. The table build is M*K*k multiply-adds, which with k = 256 and few output rows rivals the
  // GEMM's M*N*K, and a small d means many lookups per output.
  double k256_per_n, k256_per_d, k16_per_n, k16_const;
  // The dense route only when that estimate exceeds this: it also decodes the weight every call.
  double dense_min_ratio;
  // k=16: input rows per at::parallel_for task of the table build, as this many subspaces' worth
  // (at least one row).
  int64_t table_grain_subspaces;

  constexpr bool dense(int64_t m, int64_t n, int64_t d, int64_t kc) const {
    if (m < dense_min_m) return false;
    const double nd = static_cast<double>(n), dd = static_cast<double>(d);
    const double ratio = kc == 256 ? k256_per_n / nd + k256_per_d / dd : (k16_per_n / nd + k16_const) / dd;
    return ratio > dense_min_ratio;
  }
};

// avx2, measured on the development VM: AMD EPYC (Zen 3) KVM guest, 2 vCPUs, AVX2 only, 32 MiB
// LLC, 2 threads, 2026-11-23.
inline constexpr PqPolicy kPqZen3Avx2 = {
    // Fitted by hand to a one-off same-process sweep (table route vs dense route, M = 256 and
    // 1024, K, N in {384, 1536, 4096}, d in {1, 2, 4, 8}, k in {16, 256}; the sweep script is not
    // kept). `benchmarks/bench_pq_linear.py --shapes minilm` shows the outcome (rows labelled
    // "(dense)").
    .dense_min_m = 256,
    .k256_per_n = 2.0 * 256.0,
    .k256_per_d = 2.0,
    .k16_per_n = 456.0,
    .k16_const = 0.55,
    .dense_min_ratio = 1.2,
    // Never swept: chosen when the kernel was written. 4096 subspaces of 16 fp32 entries are a
    // 256 KiB table per task.
    .table_grain_subspaces = 4096,
};

// The policy for a call whose table kernels run at `choice`. Emulated levels take their native
// level's policy: under emulation speed means nothing, and the same routes keep emulated runs
// covering the same code paths. Only avx2 was measured. scalar takes avx2's values: its table
// kernels are slower, so the dense route would pay from smaller batches there, and avx2's rule
// only routes later than needed. avx512 and up have no PQ kernels of their own (the avx2 ones
// run), so avx2's values are the measured ones for what runs.
constexpr PqPolicy pq_policy(IsaChoice choice) {
  switch (choice.level) {
    case CpuIsa::kAVX2:
      return kPqZen3Avx2;
    default:  // never measured: see above
      return kPqZen3Avx2;
  }
}

}  // namespace compressops::cpu::kernels
