// The route setting of the 2:4 and CSR ops (dense_route.h): from the environment once, or as set
// at run time for the process or the calling thread.
#include "dense_route.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
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

}  // namespace compressops::cpu
