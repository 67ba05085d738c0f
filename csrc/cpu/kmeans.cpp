// Host side of the k-means assignment on CPU (compressops::kmeans_assign; the loop is in
// kernels/kmeans/): argument checks with the Python validation's messages
// (compressops/formats/pq.py check_kmeans_assign), the level choice (once per call) and
// at::parallel_for over subspaces.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "arg_checks.h"
#include "dispatch.h"
#include "kernel_record.h"
#include "kernels/kmeans/kernel.h"

namespace compressops::cpu {
namespace {

using kernels::KmeansAssignParams;
using KmeansAssignFn = bool (*)(const KmeansAssignParams&, int64_t, int64_t);

const KernelTable<KmeansAssignFn> kAssign = COMPRESSOPS_KERNEL_TABLE(kernels::kmeans_assign_subspaces);
KernelRecord kAssignRecord("kmeans_assign", [] { return kAssign.levels(); });

// Multiply-adds one parallel task does at least: below this a subspace costs less than a task.
constexpr int64_t kTaskWork = 1 << 16;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x_planar, const at::Tensor& centroids) {
  constexpr const char* op = "kmeans_assign";
  TORCH_CHECK_VALUE(centroids.device() == x_planar.device(), op, ": centroids must be on x_planar's device (",
                    x_planar.device(), "), got ", centroids.device());
  TORCH_CHECK_VALUE(x_planar.scalar_type() == at::kFloat && x_planar.dim() == 3, op,
                    ": x_planar must be float32 [S, d, N], got ", py_dtype(x_planar.scalar_type()), " ",
                    py_shape(x_planar.sizes()));
  TORCH_CHECK_VALUE(centroids.scalar_type() == at::kFloat && centroids.dim() == 3, op,
                    ": centroids must be float32 [S, k, d], got ", py_dtype(centroids.scalar_type()), " ",
                    py_shape(centroids.sizes()));
  const int64_t s = x_planar.size(0), d = x_planar.size(1), n = x_planar.size(2), k = centroids.size(1);
  TORCH_CHECK_VALUE(centroids.size(0) == s && centroids.size(2) == d, op, ": centroids must be [S, k, d] = [", s,
                    ", k, ", d, "] to match x_planar ", py_shape(x_planar.sizes()), ", got ",
                    py_shape(centroids.sizes()));
  TORCH_CHECK_VALUE(d >= 1 && k >= 1, op, ": need d >= 1 and k >= 1 centroids, got x_planar ",
                    py_shape(x_planar.sizes()), " and centroids ", py_shape(centroids.sizes()));
  TORCH_CHECK_VALUE(k <= (int64_t{1} << 31) - 1, op, ": at most 2^31 - 1 centroids, got k=", k);
  TORCH_CHECK_VALUE(!(x_planar.requires_grad() || centroids.requires_grad()) || !at::GradMode::is_enabled(), op,
                    ": has no gradient; detach x_planar and centroids");
  at::Tensor dist = at::empty({s, n}, x_planar.options());
  at::Tensor index = at::empty({s, n}, x_planar.options().dtype(at::kLong));
  at::Tensor sums = at::zeros({s, k, d}, x_planar.options().dtype(at::kDouble));
  at::Tensor counts = at::zeros({s, k}, x_planar.options().dtype(at::kLong));
  if (s == 0 || n == 0) return {dist, index, sums, counts};
  const at::Tensor x = x_planar.contiguous();
  const at::Tensor c = centroids.contiguous();
  KmeansAssignParams p{};
  p.x = x.data_ptr<float>();
  p.c = c.data_ptr<float>();
  p.dist = dist.data_ptr<float>();
  p.index = index.data_ptr<int64_t>();
  p.sums = sums.data_ptr<double>();
  p.counts = counts.data_ptr<int64_t>();
  p.d = d;
  p.k = k;
  p.n = n;
  const auto [fn, level] = kAssign.select(active_isa(), p);
  kAssignRecord.store(level);
  const KmeansAssignFn kernel = fn;
  // In double: n * k * d need not fit int64 (nothing bounds k * n, only k * d and d * n).
  const double work = static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(d);
  const int64_t grain = work >= kTaskWork ? 1 : kTaskWork / static_cast<int64_t>(work);
  at::parallel_for(0, s, grain, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  return {dist, index, sums, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(compressops, CPU, m) { m.impl("kmeans_assign", &kmeans_assign_cpu); }

}  // namespace compressops::cpu
