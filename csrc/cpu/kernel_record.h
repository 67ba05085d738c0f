// Which ISA level each op's last CPU call ran on: lets tests and `compressops.info` check that a
// forced level really reached the kernel, instead of trusting the dispatch table; and which levels
// each op has kernels for. Each family's host file defines one KernelRecord per op; the record
// registers itself at load time, so no central list names the ops.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "isa.h"

namespace compressops::cpu {

class KernelRecord {
 public:
  // `op`: the op's schema name (static storage); `levels`: the levels its kernels exist at (a table's
  // levels(), or an empty list for an op that runs baseline host code only).
  KernelRecord(const char* op, std::vector<std::string> (*levels)());
  KernelRecord(const KernelRecord&) = delete;
  KernelRecord& operator=(const KernelRecord&) = delete;

  // The hot path: one relaxed atomic store, no lock.
  void store(IsaChoice choice) noexcept {
    state_.store(2 * static_cast<intptr_t>(choice.level) + choice.emulated, std::memory_order_relaxed);
  }
  // A call that ran no compressops kernel level but another route (e.g. "dense": a torch GEMM on
  // the decoded weight), so the record never names a level that did not run. `route` must be a
  // string literal.
  void store_route(const char* route) noexcept {
    state_.store(reinterpret_cast<intptr_t>(route), std::memory_order_relaxed);
  }

  const char* op() const { return op_; }
  std::vector<std::string> levels() const { return levels_(); }
  // The level name ("avx2", "amx+emulated"), the route, or "" before the first call.
  std::string last() const;

 private:
  const char* op_;
  std::vector<std::string> (*levels_)();
  // -1: not run; below 2 * kNumIsaLevels: 2 * level + emulated; otherwise a route's address.
  std::atomic<intptr_t> state_{-1};
};

// Store into the record of `op` (a registered op name). The registry is complete once the library
// has loaded and never changes after, so this lookup takes no lock.
void record_kernel_isa(const char* op, IsaChoice choice);
void record_kernel_route(const char* op, const char* route);

// "" if the op has not run on CPU in this process; throws for an op with no record.
std::string last_kernel_isa(const std::string& op);
// Levels the op has kernels for in this build; throws for an op with no record.
std::vector<std::string> kernel_isas(const std::string& op);

}  // namespace compressops::cpu
