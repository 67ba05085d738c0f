// The dense route of the sparse linear ops: at large batch sizes a GEMM on the decoded weight beats
// the sparse kernels on this kind of CPU (a 2:4 or CSR kernel spends several times more per kept
// weight than a tuned dense GEMM spends per weight), so the op decodes the weight a block of output
// rows at a time and hands each block to torch's GEMM. The decoded block is scratch of a few MiB,
// never the whole [N, K] weight, and it is rebuilt every call: nothing dense is kept on the module.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <string>

namespace compressops::cpu {

// Which route the 2:4 and CSR ops take: "auto" follows each op's rule (its family's policy.h);
// "kernel" and "dense" force one for every call. The rules are fitted to one CPU; this lets a user
// on another one (and the tests) pick. Whatever the setting, a float call whose x holds a NaN or Inf
// takes the dense route (all_finite below): the op computes the dense layer it replaces (x @ W.T +
// bias with the decoded W, as nn.Linear and the reference), and only the dense product meets the
// zeros the kernels skip (Inf * 0 = NaN there), so no result depends on the route or batch size.
// COMPRESSOPS_SPARSE_ROUTE=auto|kernel|dense sets it when the process starts (read once, at the
// first call that asks, like COMPRESSOPS_ISA); set_forced_sparse_route changes it for the whole
// process, set_thread_sparse_route for the calling thread only (the Python context manager, so
// contexts in two threads cannot interleave).
enum class SparseRoute { kAuto, kKernel, kDense };

// The hot path: a thread-local read and one relaxed atomic load once the environment has been
// read. Throws c10::Error on a COMPRESSOPS_SPARSE_ROUTE that is not auto, kernel or dense (at every
// call, until overridden).
SparseRoute forced_sparse_route();
void set_forced_sparse_route(SparseRoute route);
// The calling thread's route (nullopt clears it), which takes precedence over the process's.
void set_thread_sparse_route(std::optional<SparseRoute> route);
std::optional<SparseRoute> thread_sparse_route();
// "auto", "kernel" or "dense" and back; parse_sparse_route throws c10::Error on anything else.
SparseRoute parse_sparse_route(const std::string& name);
const char* sparse_route_name(SparseRoute route);

// Whether every value of xf (fp32, contiguous) is finite: one vectorized pass over x,
// O(M * K) against the kernels' O(M * nnz), so the sparse ops can afford it on every call.
bool all_finite(const at::Tensor& xf);

// About this many bytes of decoded fp32 weight per block: large enough for an efficient GEMM per
// block, small enough to stay in the last-level cache between decoding it and reading it.
constexpr int64_t kDenseRouteBlockBytes = 4 << 20;

// out[m, n] = xf[m, :] . w[n, :] + bias[n], with w never held whole: decode(n0, n1, dst) writes
// rows [n0, n1) of w as fp32 into dst (row stride kw) and may run in parallel itself.
// xf: fp32 [m, kw] (rows contiguous); out: fp32 [m, n], contiguous; bias: fp32 [n]. With xf, out and
// bias all fp64 each decoded block is widened before its GEMM, whose sums then cannot overflow
// where float32 ones would (PQ's exact rows, pq_linear.cpp).
template <typename Decode>
void dense_route_linear(const at::Tensor& xf, int64_t n, int64_t kw, const std::optional<at::Tensor>& bias,
                        at::Tensor& out, const Decode& decode) {
  const int64_t rows = std::min<int64_t>(n, std::max<int64_t>(64, kDenseRouteBlockBytes / (4 * kw) / 16 * 16));
  at::Tensor w = at::empty({rows, kw}, xf.options().dtype(at::kFloat));
  for (int64_t n0 = 0; n0 < n; n0 += rows) {
    const int64_t nb = std::min(rows, n - n0);
    at::Tensor wb = w.narrow(0, 0, nb);
    decode(n0, n0 + nb, wb.data_ptr<float>());
    if (xf.scalar_type() != at::kFloat) wb = wb.to(xf.scalar_type());
    at::Tensor ob = out.narrow(1, n0, nb);
    if (bias) {
      at::addmm_out(ob, bias->narrow(0, n0, nb), xf, wb.t());
    } else {
      at::mm_out(ob, xf, wb.t());
    }
  }
}

}  // namespace compressops::cpu
