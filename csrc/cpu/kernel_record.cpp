// The registry behind KernelRecord: filled while the library loads (one record per op, from the
// families' host files), read by the _last_kernel_isa / _kernel_isas ops.
#include "kernel_record.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <mutex>

namespace compressops::cpu {
namespace {

// Records register while the library loads (static initialization of the host files), before any
// op can run; afterwards the list is only read, so lookups need no lock.
struct Registry {
  std::mutex mutex;  // serializes registration only
  std::vector<KernelRecord*> records;
};

Registry& registry() {
  static Registry r;
  return r;
}

KernelRecord& find(const char* op) {
  for (KernelRecord* rec : registry().records) {
    if (rec->op() == op || std::strcmp(rec->op(), op) == 0) return *rec;
  }
  TORCH_CHECK(false, "compressops: no CPU kernel record for op '", op, "'");
}

}  // namespace

KernelRecord::KernelRecord(const char* op, std::vector<std::string> (*levels)()) : op_(op), levels_(levels) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.records.push_back(this);
}

std::string KernelRecord::last() const {
  const intptr_t s = state_.load(std::memory_order_relaxed);
  if (s < 0) return "";
  if (s < 2 * kNumIsaLevels) return isa_choice_name({static_cast<CpuIsa>(s / 2), (s & 1) != 0});
  return reinterpret_cast<const char*>(s);
}

void record_kernel_isa(const char* op, IsaChoice choice) { find(op).store(choice); }
void record_kernel_route(const char* op, const char* route) { find(op).store_route(route); }

std::string last_kernel_isa(const std::string& op) { return find(op.c_str()).last(); }
std::vector<std::string> kernel_isas(const std::string& op) { return find(op.c_str()).levels(); }

}  // namespace compressops::cpu
