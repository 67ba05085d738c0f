// The int4 family's tuning rules, by CPU level: how activation quantization and the GEMM are split
// across threads. The host looks them up once per kernel selection, for the level it returned.
// Torch-free.
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace compressops::cpu::kernels {

struct Int4Policy {
  // Activation quantization: rows per at::parallel_for task, as this many (padded) input values'
  // worth (at least one row).
  int64_t quantize_grain_values;
  // GEMM tiles: each task takes whole column blocks when there are at least tasks_per_thread
  // blocks per thread; otherwise the batch is cut into row chunks too, for about tasks_per_thread
  // tiles per thread, with chunks of at least min_row_chunk rows.
  int64_t tasks_per_thread, min_row_chunk;
  // With at least this many rows per thread, each thread takes one run of whole rows and every
  // column block: the next op (torch splits elementwise work by contiguous rows) then reads what its
  // own core wrote (int8's policy.h has the measurement).
  int64_t row_split_min_rows;
};

// Never swept on any machine: chosen when the kernels were written (on the 2-vCPU AMD EPYC Zen 3
// development VM, 2026-11-23), the same as int8's. 16384 int8 values are 16 KiB of quantized rows
// per task, enough to outweigh a task's start; 4 tiles a thread even out uneven tiles; 16-row
// chunks keep several register tiles' worth of rows per call.
inline constexpr Int4Policy kInt4Chosen = {
    .quantize_grain_values = 16384,
    .tasks_per_thread = 4,
    .min_row_chunk = 16,
    .row_split_min_rows = 64,
};

// The policy for a kernel that runs at `choice`. No level has measurements, so every level,
// native or emulated, takes the chosen values above: they size tasks by memory and thread count,
// which no level changes much.
constexpr Int4Policy int4_policy(IsaChoice /*choice*/) { return kInt4Chosen; }

}  // namespace compressops::cpu::kernels
