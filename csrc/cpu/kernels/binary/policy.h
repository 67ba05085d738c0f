// The binary family's tuning rules, by CPU level: how activation packing and the XNOR-popcount
// convolution are split across threads. The host looks them up once per kernel selection, for the
// level it returned. Torch-free.
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace compressops::cpu::kernels {

struct BinaryPolicy {
  // Activation packing: pixels (rows) per at::parallel_for task, as this many input values' worth
  // (at least one row; from channel planes, a multiple of the kernels' 8 pixels a pass).
  int64_t pack_grain_values;
  // Convolution: output rows alone are the tasks when there are at least tasks_per_thread rows
  // per thread; otherwise each row is cut into chunks of output channels too.
  int64_t tasks_per_thread;
};

// Never swept on any machine: chosen when the kernels were written (on the 2-vCPU AMD EPYC Zen 3
// development VM, 2026-11-23). 32768 fp32 inputs are 128 KiB read per packing task, enough to
// outweigh a task's start; 4 tasks a thread even out uneven rows.
inline constexpr BinaryPolicy kBinaryChosen = {
    .pack_grain_values = 32768,
    .tasks_per_thread = 4,
};

// The policy for a kernel that runs at `choice`. No level has measurements, so every level,
// native or emulated, takes the chosen values above: they size tasks by memory and thread count,
// which no level changes much.
constexpr BinaryPolicy binary_policy(IsaChoice /*choice*/) { return kBinaryChosen; }

}  // namespace compressops::cpu::kernels
