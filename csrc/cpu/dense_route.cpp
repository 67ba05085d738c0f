// The route setting of the 2:4 and CSR ops (dense_route.h): from the environment once, or as set
// at run time for the process or the calling thread; and the finiteness test of x that overrides it.
#include "dense_route.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>

namespace compressops::cpu {
namespace {

constexpr const char* kNames[] = {"auto", "kernel", "dense"};  // in SparseRoute's order

bool lookup(const std::string& name, SparseRoute* out) {
  for (size_t i = 0; i < std::size(kNames); ++i) {
    if (name == kNames[i]) {
      *out = static_cast<SparseRoute>(i);
      return true;
    }
  }
  return false;
}

SparseRoute from_env() {
  const char* v = std::getenv("COMPRESSOPS_SPARSE_ROUTE");
  if (v == nullptr || *v == '\0') return SparseRoute::kAuto;
  SparseRoute route;
  TORCH_CHECK(lookup(v, &route), "COMPRESSOPS_SPARSE_ROUTE must be auto, kernel or dense, got '", v, "'");
  return route;
}

// -1: not set at run time (the environment's setting holds); otherwise a SparseRoute.
std::atomic<int> g_set{-1};
thread_local int t_set = -1;  // the same for the calling thread only

}  // namespace

SparseRoute forced_sparse_route() {
  if (t_set >= 0) return static_cast<SparseRoute>(t_set);
  const int set = g_set.load(std::memory_order_relaxed);
  if (set >= 0) return static_cast<SparseRoute>(set);
  static const SparseRoute env = from_env();
  return env;
}

void set_forced_sparse_route(SparseRoute route) {
  g_set.store(static_cast<int>(route), std::memory_order_relaxed);
}

void set_thread_sparse_route(std::optional<SparseRoute> route) { t_set = route ? static_cast<int>(*route) : -1; }

std::optional<SparseRoute> thread_sparse_route() {
  if (t_set < 0) return std::nullopt;
  return static_cast<SparseRoute>(t_set);
}

SparseRoute parse_sparse_route(const std::string& name) {
  SparseRoute route;
  TORCH_CHECK(lookup(name, &route), "compressops: unknown sparse route '", name,
              "'; expected auto, kernel or dense");
  return route;
}

const char* sparse_route_name(SparseRoute route) { return kNames[static_cast<int>(route)]; }

bool all_finite(const at::Tensor& xf) {
  const int64_t count = xf.numel();
  const float* x = xf.data_ptr<float>();
  // A value is Inf or NaN exactly when its exponent bits are all ones: the largest masked exponent
  // of a chunk tells, an integer max the compiler vectorizes (std::isfinite loops do not).
  constexpr uint32_t kExp = 0x7f800000u;
  return at::parallel_reduce(
      0, count, int64_t{1} << 16, true,
      [&](int64_t b, int64_t e, bool ok) {
        uint32_t top = 0;
        for (int64_t i = b; i < e; ++i) {
          uint32_t bits;
          std::memcpy(&bits, x + i, sizeof(bits));
          top = std::max(top, bits & kExp);
        }
        return ok && top != kExp;
      },
      [](bool a, bool b) { return a && b; });
}

}  // namespace compressops::cpu
